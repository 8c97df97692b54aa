"""Sequence synthesis, filling of missing sequences, and sequence ranking (after Seq2Seq).

One conditional generator (``src_models.seq2seq``) makes any target sequence from any non-empty
subset of the others. It works on axial 2D slices at ``SYNTH_SPACING_MM`` (2 mm) in-plane; the
result is resampled back onto the case's **reference grid**, so it opens aligned with the
acquired sequences.

Intensity protocol (the same for training, inference and the metrics):

* brain mask: for skull-stripped volumes (many exact zeros) every voxel > 0 in any sequence;
  otherwise (TCGA-LGG slice packs are not skull-stripped) a head mask from a threshold of the
  mean normalised image (see :func:`brain_mask`);
* each volume is scaled to [0, 1] by its own 99.5th percentile inside that mask, and clipped;
* synthetic volumes are in those normalised units (0 .. 1 = 0 .. the 99.5th percentile);
* PSNR (peak 1.0) over **brain voxels**; SSIM (Gaussian window, sigma 1.5 px, 2D per axial
  slice) **averaged over brain pixels** of the brain slices (whole-slice SSIM is inflated by the
  empty background).

Every core step here is a generator yielding :class:`~.progress.Progress` and finally its result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import progress as _progress
from .case import SEQUENCES, Case, Geometry, Volume
from .errors import GeometryError, MissingSequenceError, RadiogenError
from .progress import CancelToken, Progress
from .models import OOM_NOTE_START, oom_fallback_iter

TASK = "synthesis"
SYNTH_SPACING_MM = 2.0
PERCENTILE = 99.5
MULTIPLE = 8                    # model input H, W must be divisible by 2 ** depth
BATCH = 16
PROTOCOL = ("each volume scaled to [0,1] by its own 99.5th percentile inside the brain mask "
            "(clipped); PSNR (peak 1) over brain voxels; SSIM with a Gaussian window "
            "(sigma 1.5 px, 2D axial) averaged over brain pixels of brain slices; evaluated on "
            "the case's native grid after synthesis at 2 mm in-plane and resampling back")


# ------------------------------------------------------------------------------------------------
# intensity protocol
# ------------------------------------------------------------------------------------------------
def brain_mask(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Brain (or head) mask from one or more co-registered (z, y, x) arrays."""
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    if not arrays:
        raise GeometryError("no arrays to build a brain mask from")
    zero_frac = float(np.mean([np.mean(a == 0) for a in arrays]))
    if zero_frac > 0.3:                                   # skull-stripped: background exactly 0
        m = np.zeros(arrays[0].shape, bool)
        for a in arrays:
            m |= a > 0
        return m
    from scipy import ndimage as ndi
    acc = np.zeros(arrays[0].shape, np.float32)
    for a in arrays:
        p = np.percentile(a, PERCENTILE)
        acc += np.clip(a / p, 0, 1) if p > 0 else 0
    acc /= len(arrays)
    m = acc > 0.1
    st = np.zeros((1, 3, 3), bool)
    st[0] = True
    m = ndi.binary_opening(m, structure=st, iterations=2)
    m = np.stack([ndi.binary_fill_holes(s) for s in m]) if m.ndim == 3 else ndi.binary_fill_holes(m)
    return m


def normalise(array: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, float]:
    """Scale to [0, 1] by the 99.5th percentile inside ``mask`` (clip). Returns (array, scale)."""
    a = np.asarray(array, dtype=np.float32)
    vals = a[mask] if mask.any() else a.ravel()
    p = float(np.percentile(vals, PERCENTILE)) if vals.size else 0.0
    if not np.isfinite(p) or p <= 0:
        p = float(vals.max()) if vals.size and vals.max() > 0 else 1.0
    return np.clip(a / p, 0.0, 1.0), p


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
#: the Seq2Seq reference's evaluation, re-implemented to compare with its published figures
#: (fiy2W/mri_seq2seq: dataloader/brats.py normalisation, test_brats_seq2seq_2d_metrics.py and
#: the publication config's valid_size); reported beside PROTOCOL, never instead of it
REFERENCE_PROTOCOL = (
    "Seq2Seq reference protocol (as in its public code): each volume on its own mapped to "
    "[-1, 1] by clip(x, 0, 2 x its 99th percentile over the WHOLE volume, background "
    "included); the central 128 axial slices, the central 192 x 192 pixels of each; PSNR with "
    "data range 2 over that stack, background included; SSIM: 2D Gaussian-window SSIM (sigma "
    "1.5 px, data range 2) averaged over every pixel of those slices. Far more lenient than "
    "PROTOCOL: the exactly-matching background and the doubled range add many dB")


def _reference_norm(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    amax = 2.0 * float(np.percentile(a, 99))
    if not np.isfinite(amax) or amax <= 0:
        amax = float(a.max()) if a.max() > 0 else 1.0
    return np.clip(a, 0, amax) / amax * 2.0 - 1.0


def _reference_crop(a: np.ndarray, n_slices: int = 128, size: int = 192) -> np.ndarray:
    d, h, w = a.shape
    rd = (d - n_slices) // 2 if d > n_slices else 0
    rh = (h - size) // 2 if h > size else 0
    rw = (w - size) // 2 if w > size else 0
    return a[rd:rd + n_slices, rh:rh + size, rw:rw + size]


def reference_scores(pred: np.ndarray, real: np.ndarray) -> Tuple[float, float]:
    """(PSNR dB, SSIM) of a synthetic 3D volume against the real one under
    :data:`REFERENCE_PROTOCOL` (both (z, y, x) on the same grid, any intensity units)."""
    if np.ndim(pred) != 3 or np.shape(pred) != np.shape(real):
        raise GeometryError("the reference protocol needs two 3D volumes on the same grid")
    x = _reference_crop(_reference_norm(pred))
    y = _reference_crop(_reference_norm(real))
    mse = float(np.mean((x - y) ** 2))
    ps = float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))
    ss = float(np.mean(ssim_map(x, y, data_range=2.0)))
    return ps, ss


def psnr(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (peak 1) over the voxels in ``mask``."""
    d = (np.asarray(pred, np.float64) - np.asarray(real, np.float64))[mask]
    mse = float(np.mean(d * d)) if d.size else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def ssim_map(pred: np.ndarray, real: np.ndarray, sigma: float = 1.5,
             data_range: float = 1.0) -> np.ndarray:
    """2D SSIM map per axial slice (Gaussian window), data range 1 unless given."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(pred, np.float64)
    y = np.asarray(real, np.float64)
    s = (0, sigma, sigma) if x.ndim == 3 else sigma
    f = lambda a: gaussian_filter(a, s, truncate=3.5)   # noqa: E731
    mx, my = f(x), f(y)
    vx = f(x * x) - mx * mx
    vy = f(y * y) - my * my
    cxy = f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_brain(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """SSIM averaged over brain pixels (brain slices only)."""
    if not mask.any():
        return float("nan")
    if mask.ndim == 3:
        keep = mask.reshape(mask.shape[0], -1).any(1)
        pred, real, mask = pred[keep], real[keep], mask[keep]
    # crop to the brain's bounding box plus the filter's reach (identical result, less work)
    m = 6
    sl = []
    for ax in range(mask.ndim - 2, mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        sl.append(slice(max(0, idx[0] - m), idx[-1] + m + 1))
    sl = (slice(None),) * (mask.ndim - 2) + tuple(sl)
    pred = np.asarray(pred, np.float32)[sl]
    real = np.asarray(real, np.float32)[sl]
    return float(ssim_map(pred, real)[mask[sl]].mean())


def mae(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(np.asarray(pred, np.float64) - real)[mask].mean())


# ------------------------------------------------------------------------------------------------
# grids
# ------------------------------------------------------------------------------------------------
def on_reference_grid(case: Case, name: str) -> np.ndarray:
    """The (z, y, x) array of ``case.sequences[name]`` on the case's reference grid."""
    v = case.sequences[name]
    g = case.geometry
    if v.geometry.same_grid(g):
        return np.asarray(v.array, dtype=np.float32)
    import SimpleITK as sitk
    img = sitk.Cast(v.to_image(), sitk.sitkFloat32)
    ref = g.to_image(np.zeros(g.shape, np.float32))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def model_grid_shape(geometry: Geometry, spacing_mm: float = SYNTH_SPACING_MM
                     ) -> Tuple[int, int]:
    """In-plane (y, x) size of the model grid for a reference geometry."""
    ny, nx = geometry.shape[1], geometry.shape[2]
    sx, sy = geometry.spacing[0], geometry.spacing[1]
    if geometry.nominal and abs(sx - spacing_mm) / spacing_mm < 0.1:
        return ny, nx                            # slice packs at ~2 mm: keep as is
    return max(8, int(round(ny * sy / spacing_mm))), max(8, int(round(nx * sx / spacing_mm)))


def to_model_grid(stack: np.ndarray, size_yx: Tuple[int, int]) -> np.ndarray:
    """(C, z, y, x) -> (z, C, y', x') resampled in-plane (antialiased bilinear)."""
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stack, 1, 0), dtype=np.float32))
    if tuple(t.shape[-2:]) != tuple(size_yx):
        t = F.interpolate(t, size=size_yx, mode="bilinear", align_corners=False,
                          antialias=True)
    return t.numpy()


def from_model_grid(arr: np.ndarray, size_yx: Tuple[int, int]) -> np.ndarray:
    """(z, y', x') -> (z, y, x) bilinear."""
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) != tuple(size_yx):
        t = F.interpolate(t, size=size_yx, mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def _pad_to(arr: np.ndarray, multiple: int = MULTIPLE) -> Tuple[np.ndarray, Tuple[int, int]]:
    h, w = arr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
        arr = np.pad(arr, pad)
    return arr, (h, w)


# ------------------------------------------------------------------------------------------------
# model handling
# ------------------------------------------------------------------------------------------------
def _resolve_model(model: Any, device: str = "auto"):
    from .models import LoadedModel, default_model, load_model, resolve_device
    if isinstance(model, LoadedModel):
        if model.card.get("task") != TASK:
            raise RadiogenError(f"model {model.name!r} is a {model.card.get('task')!r} model, "
                                f"not a synthesis model")
        return model
    if model is None or model == "":
        model = default_model(TASK, prefer=("synth_seq2seq2d",))
    return load_model(str(model), task=TASK, device=resolve_device(device))


def _check_target(target: str) -> int:
    if target not in SEQUENCES:
        raise RadiogenError(f"unknown target sequence {target!r} (known: {', '.join(SEQUENCES)})")
    return SEQUENCES.index(target)


def _choose_sources(case: Case, target: str, sources: Optional[Iterable[str]]) -> List[str]:
    if sources is None:
        # acquired sequences only, never a synthetic one, never the target itself
        src = [s for s in case.present if s != target and not case.sequences[s].synthetic]
        if not src:
            src = [s for s in case.present if s != target]
    else:
        src = [s for s in dict.fromkeys(sources)]
        bad = [s for s in src if s not in SEQUENCES]
        if bad:
            raise RadiogenError(f"unknown source sequence(s) {', '.join(bad)} "
                                f"(known: {', '.join(SEQUENCES)})")
        if target in src:
            raise RadiogenError(f"the target {target} cannot also be a source")
        missing = [s for s in src if s not in case.sequences]
        if missing:
            raise MissingSequenceError(missing, src, case.present)
    if not src:
        raise MissingSequenceError([target], [target], case.present) if not case.present else \
            RadiogenError(f"case {case.case_id} has no sequence other than {target} to "
                          f"synthesise it from")
    return [s for s in SEQUENCES if s in src]


@dataclass
class Prepared:
    """A case on its reference grid, normalised, with its brain mask."""
    geometry: Geometry
    arrays: Dict[str, np.ndarray]          # normalised (z, y, x) on the reference grid
    scales: Dict[str, float]
    mask: np.ndarray                       # brain mask (z, y, x)


def prepare_case(case: Case, names: Optional[Sequence[str]] = None) -> Prepared:
    names = list(names or case.present)
    raw = {s: on_reference_grid(case, s) for s in names}
    mask = brain_mask(list(raw.values()))
    arrays, scales = {}, {}
    for s, a in raw.items():
        arrays[s], scales[s] = normalise(a, mask)
    return Prepared(geometry=case.geometry, arrays=arrays, scales=scales, mask=mask)


def generate(module, prep: Prepared, sources: Sequence[str], target: str, *, device: str = "cpu",
             cancel: Optional[CancelToken] = None, batch: int = BATCH, stage: str = "synthesize",
             detail: bool = True) -> Iterator[Any]:
    """Run the generator on a prepared case; yields Progress, finally the (z, y, x) array on the
    reference grid (normalised units, zero outside the brain mask).

    ``detail``: the net works at 2 mm; the in-plane detail finer than that is added back from
    the sources through the net's own conditional linear path (its per-source weights applied
    to each source's high-pass ``x - up(down(x))`` at the native grid)."""
    import torch

    g = prep.geometry
    size = model_grid_shape(g)
    z, ny, nx = g.shape
    avail = np.zeros(len(SEQUENCES), np.float32)
    for s in sources:
        avail[SEQUENCES.index(s)] = 1.0
    keep = np.nonzero(prep.mask.reshape(z, -1).any(1))[0]
    out_low = np.zeros((z,) + tuple(size), np.float32)
    tidx = _check_target(target)
    if keep.size:
        # (k, C, y', x'): each source brought to the model grid on its own (the in-plane
        # resampling is per channel; an absent sequence is zeros), never a (C, z, y, x) stack
        # of the reference grid (a 0.5 mm grid: 1.1 GB, and as much again for each copy)
        low = np.zeros((len(keep), len(SEQUENCES)) + tuple(size), np.float32)
        for s in sources:
            low[:, SEQUENCES.index(s)] = to_model_grid(prep.arrays[s][keep][None], size)[:, 0]
        low, (h, w) = _pad_to(low)
        xs = torch.from_numpy(low)
        av = torch.from_numpy(avail)[None]
        tg = torch.tensor([tidx])
        n = len(keep)
        with torch.inference_mode():
            for i in range(0, n, batch):
                _progress.check(cancel)
                xb = xs[i:i + batch].to(device)
                yb = module(xb, av.expand(len(xb), -1).to(device), tg.expand(len(xb)).to(device))
                out_low[keep[i:i + batch]] = yb[:, 0, :h, :w].float().cpu().numpy()
                yield Progress(stage, min(i + batch, n), n, f"{target} from {'+'.join(sources)}")
    out = from_model_grid(out_low, (ny, nx))
    if detail and keep.size and hasattr(module, "linear_coefficients") \
            and tuple(size) != (ny, nx):
        import torch
        with torch.inference_mode():
            coef = module.linear_coefficients(torch.from_numpy(avail)[None].to(device),
                                              torch.tensor([tidx]).to(device))[0].float().cpu()
        coef = coef.numpy()
        low_u = low[:, :, :size[0], :size[1]]
        for s in sources:
            c = SEQUENCES.index(s)
            if coef[c] != 0:
                hp = prep.arrays[s][keep] - from_model_grid(low_u[:, c], (ny, nx))
                out[keep] += coef[c] * hp
    out = np.clip(out, 0.0, 1.0) * prep.mask
    yield out.astype(np.float32)


def _generated(*args: Any, **kwargs: Any) -> Iterator[Progress]:
    """:func:`generate`'s progress, then (``yield from`` gives it) its array: the form
    :func:`core.models.oom_fallback_iter` starts again on the CPU."""
    arr = None
    for item in generate(*args, **kwargs):
        if isinstance(item, Progress):
            yield item
        else:
            arr = item
    return arr


# ------------------------------------------------------------------------------------------------
# synthesis
# ------------------------------------------------------------------------------------------------
@dataclass
class SynthResult:
    case_id: str
    target: str
    sources: List[str]
    volume: Volume                                  # synthetic=True, on the reference grid
    model: str
    psnr: Optional[float] = None                    # vs the real target, if the case has it
    ssim: Optional[float] = None
    mae: Optional[float] = None
    seconds: float = 0.0                            # total, metrics included
    seconds_synthesis: float = 0.0                  # model loading + synthesis, no metrics
    warnings: List[str] = field(default_factory=list)   # e.g. the case trained the model
    #: where the network ran: the model's device, or ``cpu`` after a CUDA out-of-memory
    #: fallback (said in ``warnings``)
    device: str = "cpu"

    def to_json(self) -> Dict[str, Any]:
        return {"case_id": self.case_id, "target": self.target, "sources": self.sources,
                "synthetic": True, "model": self.model, "device": self.device,
                "metrics": ({"psnr_db": self.psnr, "ssim_brain": self.ssim, "mae": self.mae,
                             "protocol": PROTOCOL} if self.psnr is not None else None),
                "warnings": [str(w) for w in self.warnings],
                "seconds": round(self.seconds, 3),
                "seconds_synthesis": round(self.seconds_synthesis, 3)}


def synthesize(case: Case, model: Any = None, target: str = "t1ce", *,
               sources: Optional[Iterable[str]] = None, device: str = "auto",
               cancel: Optional[CancelToken] = None) -> Iterator[Any]:
    """Generate ``target`` for ``case`` from ``sources`` (default: every acquired sequence but the
    target). Yields Progress, finally a :class:`SynthResult` whose volume lies on the case's
    reference grid (``synthetic=True``); PSNR/SSIM against the real target when the case has it.
    """
    t0 = time.perf_counter()
    _check_target(target)
    src = _choose_sources(case, target, sources)
    yield Progress("synthesize", 0, 0, "loading model")
    lm = _resolve_model(model, device)
    _progress.check(cancel)
    has_real = target in case.sequences and not case.sequences[target].synthetic
    names = src + ([target] if has_real else [])
    yield Progress("synthesize", 0, 0, "preparing")
    prep = prepare_case(case, names)
    warns: List[str] = []
    arr, ran = yield from oom_fallback_iter(
        lambda d: _generated(lm.module, prep, src, target, device=d, cancel=cancel),
        lm.device, models=[lm], warn=warns, what=f"{target} was synthesised")
    g = case.geometry
    vol = Volume(array=arr, geometry=g, path=None, synthetic=True,
                 meta={"sequence": target, "synthetic": True, "sources": src, "model": lm.name,
                       "units": "normalised: 0..1 = 0..99.5th brain percentile"})
    res = SynthResult(case_id=case.case_id, target=target, sources=src, volume=vol, model=lm.name,
                      warnings=warns, device=ran)
    res.seconds_synthesis = time.perf_counter() - t0      # everything but the metrics
    if has_real:
        real = prep.arrays[target]
        res.psnr = psnr(arr, real, prep.mask)
        res.ssim = ssim_brain(arr, real, prep.mask)
        res.mae = mae(arr, real, prep.mask)
        low = quality_note(lm.card, target, res.psnr) if case.kind == "volume" else None
        if low is not None:
            res.warnings.append(low)
    from .insample import SYNTHESIS, SYNTHESIS_METRICS, case_in_sample_note
    note = case_in_sample_note(case, lm.name, lm.card,
                               SYNTHESIS_METRICS if has_real else SYNTHESIS)
    if note is not None:
        res.warnings.append(note)
    res.seconds = time.perf_counter() - t0
    yield res


def quality_note(card: Optional[Dict[str, Any]], target: str, psnr_db: Optional[float],
                 margin_db: float = 3.0) -> Optional[str]:
    """A caution when a synthetic volume's PSNR against the real scan lies more than
    ``margin_db`` below the median of the model's held-out BraTS cases for that target (card
    ``metrics.brats_per_case``), naming that median and range; None otherwise or without them."""
    rows = [r for r in (((card or {}).get("metrics") or {}).get("brats_per_case") or [])
            if isinstance(r, dict) and r.get("target") == target
            and isinstance(r.get("psnr_db"), (int, float))]
    if psnr_db is None or not rows or not np.isfinite(psnr_db):
        return None
    vals = np.array([float(r["psnr_db"]) for r in rows])
    med = float(np.median(vals))
    if psnr_db >= med - margin_db:
        return None
    return (f"synthetic {target}: PSNR {psnr_db:.1f} dB against the real {target} is well "
            f"below this model's typical held-out result (median {med:.1f} dB, range "
            f"{vals.min():.1f}-{vals.max():.1f} dB over {len(vals)} BraTS cases): this case's "
            f"contrast may differ from the training data; treat the synthetic {target} with "
            "caution")


def synthesize_volume(case: Case, model: Any = None, target: str = "t1ce", **kw: Any
                      ) -> SynthResult:
    """Blocking convenience wrapper around :func:`synthesize`."""
    return _progress.run(synthesize(case, model, target, **kw))


def fill_missing(case: Case, model: Any = None, needed: Iterable[str] = SEQUENCES, *,
                 device: str = "auto", cancel: Optional[CancelToken] = None) -> Iterator[Any]:
    """Synthesise every sequence of ``needed`` that ``case`` lacks, from its acquired ones.

    Yields Progress, finally a new :class:`Case` whose added sequences are ``Volume``s with
    ``synthetic=True`` (``case.synthetic_inputs()`` names them) and whose ``meta['synthesized']``
    records, per sequence, the sources and the model. Results computed from this case must say
    that they used synthetic inputs.
    """
    needed = [needed] if isinstance(needed, str) else list(needed)
    bad = [s for s in needed if s not in SEQUENCES]
    if bad:
        raise RadiogenError(f"unknown sequence(s) {', '.join(map(str, bad))} "
                            f"(known: {', '.join(SEQUENCES)})")
    needed = [s for s in SEQUENCES if s in set(needed)]
    todo = [s for s in needed if s not in case.sequences]
    if not todo:
        yield case
        return
    acquired = [s for s in case.present if not case.sequences[s].synthetic]
    if not acquired:
        raise MissingSequenceError(todo, needed, case.present)
    lm = _resolve_model(model, device)
    out = case
    info: Dict[str, Any] = dict(case.meta.get("synthesized") or {})
    for i, t in enumerate(todo):
        yield Progress("fill-missing", i, len(todo), f"synthesising {t}")
        res = None
        for item in synthesize(case, lm, t, sources=acquired, device=device, cancel=cancel):
            if isinstance(item, Progress):
                yield item
            else:
                res = item
        out = out.with_sequence(t, res.volume)
        info[t] = {"sources": res.sources, "model": res.model, "device": res.device}
        fell_back = [w for w in res.warnings if w.startswith(OOM_NOTE_START)]
        if fell_back:                    # the analysis that fills the case says it
            info[t]["warnings"] = fell_back
    meta = dict(out.meta)
    meta["synthesized"] = info
    from dataclasses import replace
    out = replace(out, meta=meta)
    yield Progress("fill-missing", len(todo), len(todo), "done")
    yield out


# ------------------------------------------------------------------------------------------------
# ranking (Seq2Seq contribution scores and imaging-differentiation maps)
# ------------------------------------------------------------------------------------------------
@dataclass
class CaseRanking:
    case_id: str
    sequences: List[str]
    pairs: List[Dict[str, Any]]                      # {source, target, psnr_db, ssim_brain, mae}
    scores: Dict[str, Dict[str, float]]              # per sequence: as_source, as_target, contribution
    maps: Dict[str, Volume] = field(default_factory=dict)   # target -> MAE map (reference grid)


@dataclass
class RankResult:
    cases: List[CaseRanking]
    cohort_scores: Dict[str, Dict[str, float]]
    cohort_pairs: List[Dict[str, Any]]
    model: str
    #: e.g. a CUDA out-of-memory fallback (the ranking then went on on the CPU)
    warnings: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"model": self.model, "protocol": PROTOCOL, "warnings": list(self.warnings),
                "method": CONTRIBUTION_METHOD,
                "cohort": {"n_cases": len(self.cases), "scores": self.cohort_scores,
                           "pairs": self.cohort_pairs},
                "cases": [{"case_id": c.case_id, "sequences": c.sequences, "pairs": c.pairs,
                           "scores": c.scores, "maps": sorted(c.maps)} for c in self.cases]}


CONTRIBUTION_METHOD = (
    "single-source synthesis for every ordered pair (source -> target) of present sequences; "
    "PSNR and brain SSIM are each z-scored over the pairs and averaged into a pair score z; "
    "as_source(s) = mean_t z(s->t) (how well s generates the others); as_target(s) = "
    "-mean_u z(u->s) (how hard s is to generate from the others); contribution = mean of the "
    "two. Differentiation map of a target t = per-voxel mean over sources of |G(s->t) - t| "
    "(normalised units).")


def contribution_scores(pairs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Seq2Seq-style contribution scores from pair metrics (z-scored PSNR and SSIM)."""
    if not pairs:
        return {}
    p = np.array([d["psnr_db"] for d in pairs], float)
    s = np.array([d["ssim_brain"] for d in pairs], float)

    def z(a):
        sd = a.std()
        return (a - a.mean()) / sd if sd > 0 else np.zeros_like(a)

    zz = (z(p) + z(s)) / 2
    seqs = [q for q in SEQUENCES if any(d["source"] == q or d["target"] == q for d in pairs)]
    out: Dict[str, Dict[str, float]] = {}
    for q in seqs:
        src = [zz[i] for i, d in enumerate(pairs) if d["source"] == q]
        tgt = [zz[i] for i, d in enumerate(pairs) if d["target"] == q]
        a = float(np.mean(src)) if src else 0.0
        b = float(-np.mean(tgt)) if tgt else 0.0
        out[q] = {"as_source": a, "as_target": b, "contribution": (a + b) / 2}
    return out


def rank_sequences(case_or_cases: Union[Case, Sequence[Case]], model: Any = None, *,
                   device: str = "auto", cancel: Optional[CancelToken] = None,
                   maps: bool = True) -> Iterator[Any]:
    """Contribution scores and differentiation maps for one case or a cohort.

    Yields Progress, finally a :class:`RankResult` (per case: pair metrics, scores, and per
    target the MAE map of generating it from each single source; cohort: scores from the pair
    metrics averaged over cases). Only acquired (non-synthetic) sequences take part.
    """
    cases = [case_or_cases] if isinstance(case_or_cases, Case) else list(case_or_cases)
    if not cases:
        raise RadiogenError("no cases to rank")
    lm = _resolve_model(model, device)
    plans = []
    for c in cases:
        seqs = [s for s in c.present if not c.sequences[s].synthetic]
        if len(seqs) < 2:
            raise RadiogenError(f"case {c.case_id} has {len(seqs)} acquired sequence(s); ranking "
                                "needs at least 2")
        plans.append((c, seqs))
    total = sum(len(s) * (len(s) - 1) for _, s in plans)
    done = 0
    results: List[CaseRanking] = []
    warns: List[str] = []
    for c, seqs in plans:
        prep = prepare_case(c, seqs)
        pairs = []
        mapsum = {t: np.zeros(prep.geometry.shape, np.float32) for t in seqs}
        for t in seqs:
            for s in seqs:
                if s == t:
                    continue
                _progress.check(cancel)
                yield Progress("rank", done, total, f"{c.case_id}: {t} from {s}")
                arr, _ = _progress.run(oom_fallback_iter(
                    lambda d: _generated(lm.module, prep, [s], t, device=d, cancel=cancel,
                                         stage="rank-pair"),
                    lm.device, models=[lm], warn=warns,
                    what="the ranking went on (from this pair)"))
                real = prep.arrays[t]
                pairs.append({"source": s, "target": t, "psnr_db": psnr(arr, real, prep.mask),
                              "ssim_brain": ssim_brain(arr, real, prep.mask),
                              "mae": mae(arr, real, prep.mask)})
                if maps:
                    mapsum[t] += np.abs(arr - real) * prep.mask
                done += 1
        m = {}
        if maps:
            for t in seqs:
                m[t] = Volume(array=(mapsum[t] / (len(seqs) - 1)).astype(np.float32),
                              geometry=prep.geometry, synthetic=True,
                              meta={"kind": "differentiation-map", "target": t,
                                    "sources": [s for s in seqs if s != t], "model": lm.name})
        results.append(CaseRanking(case_id=c.case_id, sequences=seqs, pairs=pairs,
                                   scores=contribution_scores(pairs), maps=m))
    yield Progress("rank", total, total, "done")
    yield combine_rankings(results, lm.name, warns)


@dataclass
class RankFailure:
    """A case of a cohort that could not be loaded or ranked: reported, and skipped."""
    case: str
    message: str


def rank_cohort(paths: Sequence[Any], model: Any = None, *, device: str = "auto",
                cancel: Optional[CancelToken] = None, maps: bool = True,
                prepare: Optional[Callable[[Case], Case]] = None
                ) -> Iterator[Union[Progress, RankFailure, RankResult]]:
    """Rank each case of a cohort on its own, one model for all, one case in memory at a time
    (``paths``: case folders, files or packs). A case that cannot be loaded or ranked is
    yielded as a :class:`RankFailure` and skipped; the rest go on. Finally yields the
    :class:`RankResult` of the cases ranked (each pair's metrics averaged over them,
    :func:`combine_rankings`); raises :class:`RadiogenError` when none could be. ``prepare``:
    applied to each case once loaded (``radiogen rank-sequences --register`` registers it
    there); a case it fails on fails like any other. Used by ``radiogen rank-sequences`` on a
    folder."""
    from .errors import Cancelled, error_text
    from .io import case_id_of, load_case
    paths = list(paths)
    lm = _resolve_model(model, device)
    ranked: List[CaseRanking] = []
    warns: List[str] = []
    for i, path in enumerate(paths):
        _progress.check(cancel)
        yield Progress("rank", i, len(paths), f"{case_id_of(path)}: loading")
        try:
            case = load_case(path)
            if prepare is not None:
                case = prepare(case)
            for item in rank_sequences(case, lm, device=device, cancel=cancel, maps=maps):
                if isinstance(item, Progress):
                    yield Progress("rank", i, len(paths), f"{case.case_id}: {item.message}")
                else:
                    ranked.extend(item.cases)
                    warns.extend(f"{case.case_id}: {w}" for w in item.warnings)
        except Cancelled:
            raise
        except Exception as e:          # a bad case is reported; the rest go on
            yield RankFailure(case_id_of(path), error_text(e))
    yield Progress("rank", len(paths), len(paths), "done")
    if not ranked:
        raise RadiogenError(f"none of the {len(paths)} case(s) could be ranked (every one "
                            "failed; see the messages above)")
    yield combine_rankings(ranked, lm.name, warns)


def combine_rankings(results: Sequence[CaseRanking], model_name: str,
                     warnings: Sequence[str] = ()) -> RankResult:
    """The cohort ranking of cases ranked one by one: each pair's metrics averaged over the
    cases that have it, then z-scored into contribution scores (``warnings``: the ranking's,
    each said once)."""
    acc: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in results:
        for d in r.pairs:
            acc.setdefault((d["source"], d["target"]), []).append(d)
    cohort_pairs = [{"source": s, "target": t, "n_cases": len(v),
                     "psnr_db": float(np.mean([d["psnr_db"] for d in v])),
                     "ssim_brain": float(np.mean([d["ssim_brain"] for d in v])),
                     "mae": float(np.mean([d["mae"] for d in v]))}
                    for (s, t), v in sorted(acc.items())]
    return RankResult(cases=list(results), cohort_scores=contribution_scores(cohort_pairs),
                      cohort_pairs=cohort_pairs, model=model_name,
                      warnings=list(dict.fromkeys(warnings)))


def synthetic_provenance(case: Case) -> Dict[str, Any]:
    """What a result computed from ``case`` must report about synthetic inputs."""
    syn = list(case.synthetic_inputs())
    return {"synthetic_inputs": syn, "uses_synthetic_input": bool(syn),
            "synthesized": case.meta.get("synthesized", {})}


def plot_scores(ax, scores: Dict[str, Dict[str, float]], title: str = "") -> None:
    """Bar chart of contribution scores on a matplotlib Axes (no pyplot state used)."""
    seqs = [s for s in SEQUENCES if s in scores]
    x = np.arange(len(seqs))
    keys = (("contribution", "contribution", "#4c72b0"), ("as_source", "as source", "#55a868"),
            ("as_target", "as target (difficulty)", "#c44e52"))
    w = 0.27
    for i, (k, label, col) in enumerate(keys):
        ax.bar(x + (i - 1) * w, [scores[s][k] for s in seqs], w, label=label, color=col)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(seqs)
    ax.set_ylabel("z-score (PSNR, SSIM)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")


def needs_synthesis(case: Case, needed: Iterable[str]) -> List[str]:
    """The sequences of ``needed`` that ``case`` lacks (what :func:`fill_missing` would make).
    Callers (segmentation, prediction, the analyze pipeline) use it to offer synthesis first."""
    return [s for s in SEQUENCES if s in set(needed) and s not in case.sequences]
