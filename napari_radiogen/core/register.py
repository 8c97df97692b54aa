"""Co-registration of a case's sequences onto its reference sequence (SimpleITK; translation).

The models expect the sequences aligned as their headers place them. When they are not
(patient motion between series; :func:`core.prepare.registration_warnings` says so), a
registration of each acquired sequence onto the reference (Mattes mutual information, a
translation, two resolution levels) finds the shift between them. Only a translation: on the
shared native case (5.5 mm slices, series tilted 5.5 and 17 degrees) rigid registrations
rotated a T2 acquired on the FLAIR's own tilt by 18 degrees, while translations agree with the
edge offsets of ``prepare``. The shift is folded into the moving sequence's header (its
origin): its voxels
are not resampled here, so the one interpolation stays the one ``prepare`` makes onto the working
grid, and a result written back to the reference grid is where it was.

A registration that does not leave the sequence's edges closer to the reference's
(``prepare.sequence_offsets``) than they were, or that moves it by more than
:data:`MAX_SHIFT_MM`, is not applied, and is said; a sequence already within
:data:`ALIGNED_MM` is left as it is.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import progress as _progress
from .case import Case, Geometry, Volume
from .progress import Progress

__all__ = ["register_case", "moved_sequences", "translation", "moved_geometry", "MAX_SHIFT_MM"]

#: a registration moving a sequence by more than this (mm) is taken for a failure
MAX_SHIFT_MM = 30.0
#: a sequence whose edges are this close (mm) to the reference's is left as it is
ALIGNED_MM = 1.0


def translation(fixed: Volume, moving: Volume, *, seed: int = 0) -> np.ndarray:
    """The shift ``t`` (LPS mm) mapping ``fixed`` world points to ``moving`` ones
    (``p_moving = p_fixed + t``) that best aligns the two (Mattes mutual information)."""
    f = sitk.Cast(fixed.to_image(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_image(), sitk.sitkFloat32)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 0.01, 200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2, 1])
    reg.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    out = reg.Execute(f, m)
    return np.array(out.GetParameters()[-3:], dtype=float)


def moved_geometry(geometry: Geometry, r: np.ndarray, c: np.ndarray, t: np.ndarray) -> Geometry:
    """``geometry`` with the rigid transform ``p_moving = R (p - c) + c + t`` undone: each voxel
    placed at the fixed-image point it shows (direction ``R^T D``, origin ``R^T (o - c - t) + c``)."""
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    o = np.asarray(geometry.origin, dtype=float)
    d2 = r.T @ d
    o2 = r.T @ (o - c - t) + c
    return replace(geometry, direction=tuple(float(v) for v in d2.ravel()),
                   origin=tuple(float(v) for v in o2))


def register_case(case: Case, *, cancel=None) -> Iterator[Union[Progress, Tuple[Case, List[str]]]]:
    """Register every acquired sequence of ``case`` onto its reference (the first acquired
    sequence when the reference is synthetic). Yields :class:`Progress`, then ``(case, notes)``:
    the case with the moved sequences' headers changed (the others as they were) and one note
    per sequence (moved by how much, or why it was left as it was)."""
    from .prepare import acquired_sequences, sequence_offsets, without_padding

    acquired = acquired_sequences(case)
    notes: List[str] = []
    if len(acquired) < 2:
        yield case, notes
        return
    ref = acquired[0]
    vols = {s: without_padding(case.sequences[s]) for s in acquired}
    fixed, grid = vols[ref], vols[ref].geometry

    def size(d) -> Optional[float]:
        return float(np.linalg.norm(d)) if d is not None else None

    # where each sequence stands before: an aligned one is not registered at all
    before = {s: size(d) for s, d in sequence_offsets(vols, grid, cancel=cancel).items()}
    out = case
    for k, s in enumerate(acquired[1:]):
        _progress.check(cancel)
        b = before.get(s)
        if b is not None and b <= ALIGNED_MM:
            notes.append(f"{s} left as it is: its edges are {b:.1f} mm from {ref}'s "
                         "(already aligned)")
            continue
        yield Progress("register", k, len(acquired) - 1, f"registering {s} onto {ref}")
        moving = case.sequences[s]
        try:
            t = translation(fixed, vols[s])
        except RuntimeError as e:          # SimpleITK: e.g. too few samples overlap
            notes.append(f"{s} not registered onto {ref}: the registration failed "
                         f"({str(e).strip().splitlines()[-1][:120]})")
            continue
        shift = float(np.linalg.norm(t))
        if shift > MAX_SHIFT_MM:
            notes.append(f"{s} not registered onto {ref}: the registration moved it by "
                         f"{shift:.0f} mm (more than {MAX_SHIFT_MM:.0f}), taken for a failure")
            continue
        moved = Volume(moving.array, moved_geometry(moving.geometry, np.eye(3), np.zeros(3), t),
                       meta=dict(moving.meta, registered_onto=ref), path=moving.path,
                       synthetic=moving.synthetic)
        a = size(sequence_offsets({ref: fixed, s: without_padding(moved)}, grid).get(s))
        if b is not None and a is not None and a > b:
            notes.append(f"{s} not registered onto {ref}: the registration left its edges "
                         f"further from {ref}'s ({a:.1f} mm against {b:.1f} mm), taken for a "
                         "failure")
            continue
        out = out.with_sequence(s, moved)
        notes.append(f"{s} registered onto {ref} (translation, mutual information): moved "
                     f"{shift:.1f} mm"
                     + (f"; edge offset {b:.1f} -> {a:.1f} mm" if b is not None and a is not None
                        else ""))
    yield out, notes


def moved_sequences(before: Case, after: Case) -> List[str]:
    """The sequences :func:`register_case` moved: those of ``after`` (its result) that are not
    ``before``'s (its input) own volumes (it replaces a moved sequence only)."""
    return [s for s, v in after.sequences.items() if before.sequences.get(s) is not v]
