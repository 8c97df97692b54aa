"""Are the sequences of each case co-registered? Reproduces the figures of the README's
"Sequences that are not co-registered are warned about".

For each case (a case folder or file, or every case of a cohort folder), prints the offset of
each acquired sequence from the reference sequence that ``core.prepare`` warns about
(``sequence_offsets``: edges cross-correlated on a 2 mm copy of the reference grid), whether it
is warned about, and, with ``--mi``, the translation that a SimpleITK mutual-information
registration (translation only, three resolution levels) finds, for comparison. ``--shift``
adds a header shift (mm, x y z) to one sequence first, to see that one is found.

    python scripts/registration_offsets.py ../shared/data/tcga-lgg
    python scripts/registration_offsets.py ../shared/data/tcga-native/TCGA-FG-6692/native --mi
    python scripts/registration_offsets.py ../shared/data/brats2021 --shift t2 0 8 0
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def mi_translation(fixed, moving):
    """(x, y, z) mm along the fixed image's grid axes: the translation of a SimpleITK
    Mattes mutual-information registration (translation only) of ``moving`` onto ``fixed``."""
    import SimpleITK as sitk
    f = sitk.Cast(fixed.to_image(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_image(), sitk.sitkFloat32)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, 1)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 0.01, 200)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    t = reg.Execute(f, m)
    shift = np.array(t.GetParameters()[-3:])         # LPS mm, fixed point -> moving point
    d = np.array(fixed.to_image().GetDirection()).reshape(3, 3)
    return tuple(float(v) for v in d.T @ shift)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="case folders/files or cohort folders")
    ap.add_argument("--mi", action="store_true", help="also a SimpleITK MI registration")
    ap.add_argument("--shift", nargs=4, metavar=("SEQ", "X", "Y", "Z"),
                    help="add this header shift (mm) to one sequence first")
    args = ap.parse_args(argv)

    from napari_radiogen.core.case import Volume
    from napari_radiogen.core.io import list_cases, load_case
    from napari_radiogen.core.prepare import (MISREGISTRATION_MAX_SPACING_MM,
                                              registration_warnings_by_sequence, sequence_offsets,
                                              without_padding)
    cases = []
    for p in args.paths:
        cases.extend(list_cases(p))
    largest, warned = 0.0, 0
    for path in cases:
        case = load_case(path)
        if args.shift and args.shift[0] in case.sequences:
            v = case.sequences[args.shift[0]]
            g = v.geometry
            d = [float(x) for x in args.shift[1:]]
            case = case.with_sequence(args.shift[0], Volume(
                v.array, g.with_(origin=tuple(o + e for o, e in zip(g.origin, d))),
                meta=dict(v.meta), path=v.path))
        ref = case.reference
        vols = {s: without_padding(case.sequences[s])
                for s in [ref] + [s for s in case.sequences if s != ref]}
        grid = case.sequences[ref].geometry
        axes = [h <= MISREGISTRATION_MAX_SPACING_MM for h in grid.spacing]
        offsets = sequence_offsets(vols, grid)
        said = set(registration_warnings_by_sequence(vols, grid))
        warned += bool(said)
        for s, d in offsets.items():
            if d is None:
                print(f"{case.case_id:24s} {s:6s} blank")
                continue
            size = float(np.sqrt(sum(v * v for v, ok in zip(d, axes) if ok)))
            largest = max(largest, size)
            line = (f"{case.case_id:24s} {s:6s} offset from {ref}: x {d[0]:+5.1f} y {d[1]:+5.1f} "
                    f"z {d[2]:+5.1f} mm, judged {size:4.1f} mm"
                    f"{'  WARNED' if s in said else ''}")
            if args.mi:
                m = mi_translation(case.sequences[ref], case.sequences[s])
                line += f"   MI: x {m[0]:+5.1f} y {m[1]:+5.1f} z {m[2]:+5.1f} mm"
            print(line)
    print(f"{len(cases)} case(s); {warned} warned about; largest judged offset "
          f"{largest:.1f} mm (axes sampled at most {MISREGISTRATION_MAX_SPACING_MM:g} mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
