"""Explanations in 3D: Grad-CAM / Grad-CAM++ / LayerCAM (torchcam) and MIL attention maps.

:func:`explain` is a generator (``Progress`` items, then an :class:`ExplainResult`) that maps a
heatmap for one task of a prediction model back onto the case's reference grid (float32 in
[0, 1], same shape and geometry as the reference sequence), so it overlays the MRI in napari and
writes as NIfTI with the case's affine.

* **Slice MIL model** (``src_models.mil``): torchcam on each sequence encoder's chosen layer
  gives one 2D map per slice (ReLU of the class evidence, *not* normalised per slice: the
  gradients already carry how much each slice mattered); each sequence's maps are weighted by
  that sequence's slice attention and summed over sequences ("gradcam", "gradcam++",
  "layercam"). Method "attention" paints each slice with its attention weight (mean over
  sequences) inside the head foreground: which slices drove the decision.
* **3D CNN** (``src_models.cnn3d``): torchcam on a 3D layer of the ResNet trunk; the
  (depth, h, w) map is interpolated to the slice stack the network saw.
* Ensembles (the shipped fold ensembles): the (unnormalised) maps of the members are averaged.
* Coarse CAM cells are upsampled cell-centre aligned (``align_corners=False``), then back to the
  case grid: the slice stack is the one ``core.predict.case_to_input`` made, so the inverse is
  exact in z (chosen reference slices, linear in between) and in-plane (the same centre and
  sampling factors, linear).
* The volume is scaled to [0, 1] by its maximum only (after the ReLU its minimum is 0): zero
  evidence stays 0, no floor offset spreads mass over the head.

The defaults (layer per model kind, the fusion) were selected on the 88 TCGA-LGG packs with
``scripts/eval_localisation.py`` (BraTS 2021 held out); ``fusion="legacy"`` reproduces the
previous maps (per-slice min-max normalised CAMs, corner-aligned upsampling).

:func:`localisation_score` is the measure reported per case and in the model cards: the
fraction of heatmap mass inside the whole-tumour mask dilated by 5 mm.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from .errors import ConfigError, RadiogenError
from .notes import SYNTHETIC_SEGMENTATION, synthetic_note
from .progress import CancelToken, Progress, check
from .models import oom_fallback, oom_fallback_iter

METHODS = ("gradcam", "gradcam++", "layercam", "attention", "occlusion")
#: the methods of each model kind (the first is the default)
KIND_METHODS = {"mil": ("gradcam", "gradcam++", "layercam", "attention"),
                "mil_roi": ("gradcam", "gradcam++", "layercam", "attention"),
                "volume3d": ("gradcam", "gradcam++", "layercam"),
                "volume3d_roi": ("gradcam", "gradcam++", "layercam"),
                "radiomics": ("occlusion",)}
TASKS = ("idh", "codel_1p19q", "grade")
#: default torchcam target layers (names inside one member), selected on the TCGA-LGG packs
DEFAULT_LAYER = {"mil": "net.layer3", "mil_roi": "net.layer3", "volume3d": "net.layer2",
                 "volume3d_roi": "net.layer2"}
#: "raw": unnormalised ReLU maps, attention-weighted (MIL), cell-centred upsampling (default);
#: "legacy": per-slice / per-member min-max normalised maps, corner-aligned upsampling
FUSIONS = ("raw", "legacy")
#: the layers of the legacy maps (``fusion="legacy"`` without an explicit ``layer``)
LEGACY_LAYER = {"mil": "net.layer2", "mil_roi": "net.layer2", "volume3d": "net.layer3",
                "volume3d_roi": "net.layer3"}


@dataclass
class ExplainResult:
    case_id: str
    task: str
    method: str
    model: str
    target_class: str
    heatmap: np.ndarray                   # (z, y, x) float32 in [0, 1], reference grid
    geometry: Any                         # core.case.Geometry of the reference sequence
    localisation: Optional[float] = None  # fraction of mass in WT dilated by 5 mm
    mask_source: Optional[str] = None     # "ground truth" / "segmentation" / None
    slice_weights: Dict[str, List[float]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    details: Dict[str, Any] = field(default_factory=dict)   # method-specific (occlusion blocks)
    #: every synthetic sequence the explanation rests on: the model's own inputs, then those
    #: of the tumour segmentation it used (the window or occlusion mask, the localisation mask
    #: it segmented itself), as ``PredictionResult.synthetic_inputs``
    synthetic_inputs: List[str] = field(default_factory=list)
    #: where the network ran: the device asked for, or ``cpu`` after a CUDA out-of-memory
    #: fallback (said in ``warnings``)
    device: str = "cpu"

    @property
    def localisation_missing(self) -> Optional[str]:
        """Why there is no localisation score (None when there is one): no tumour mask, a map
        with no mass (nothing in the explained layer speaks for the class), or an empty mask."""
        if self.localisation is not None:
            return None
        if self.mask_source is None:
            return "no tumour mask"
        if not np.any(np.asarray(self.heatmap) > 0):
            return f"the map is empty: nothing in the layer speaks for {self.target_class}"
        return "the tumour mask is empty"

    @property
    def localisation_text(self) -> str:
        """The score as the dock, the report and ``radiogen explain`` say it: ``0.56``, or
        ``n/a (<why>)``."""
        if self.localisation is None:
            return f"n/a ({self.localisation_missing})"
        return f"{self.localisation:.2f}"

    @property
    def metadata(self) -> Dict[str, Any]:
        return {"case_id": self.case_id, "task": self.task, "method": self.method,
                "model": self.model, "target_class": self.target_class,
                "localisation": self.localisation, "mask_source": self.mask_source,
                **({"localisation_missing": self.localisation_missing}
                   if self.localisation is None else {}),
                "synthetic_inputs": list(self.synthetic_inputs), "device": self.device,
                **({"details": self.details} if self.details else {})}


def method_slug(method: str) -> str:
    """The method's name in file names: ``gradcam++`` -> ``gradcampp``."""
    return method.replace("+", "p")


def localisation_score(heatmap: np.ndarray, wt_mask: np.ndarray,
                       spacing_zyx: Sequence[float], dilate_mm: float = 5.0) -> Optional[float]:
    """Fraction of heatmap mass inside ``wt_mask`` dilated by ``dilate_mm`` (None if either is
    empty). The distance transform runs on the mask's bounding box plus the margin only."""
    wt = np.asarray(wt_mask, bool)
    heatmap = np.asarray(heatmap)
    # the mass in float64 a slab at a time (no float64 copy of a fine grid's whole heatmap)
    total = _positive_mass(heatmap)
    if not wt.any() or total <= 0:
        return None
    sp = tuple(float(s) for s in spacing_zyx)
    idx = np.nonzero(wt)
    box = tuple(slice(max(0, int(i.min()) - int(np.ceil(dilate_mm / s)) - 1),
                      int(i.max()) + int(np.ceil(dilate_mm / s)) + 2) for i, s in zip(idx, sp))
    dist = ndimage.distance_transform_edt(~wt[box], sampling=sp)
    h = np.clip(np.asarray(heatmap[box], np.float64), 0, None)
    return float(h[dist <= dilate_mm].sum() / total)


def _positive_mass(a: np.ndarray, slab: int = 16) -> float:
    """Sum of the positive values of ``a`` in float64, ``slab`` planes of the first axis at a
    time."""
    if a.ndim == 0 or a.shape[0] <= slab:
        return float(np.clip(np.asarray(a, np.float64), 0, None).sum())
    return float(sum(np.clip(np.asarray(a[i:i + slab], np.float64), 0, None).sum()
                     for i in range(0, a.shape[0], slab)))


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Slice-wise hole filling (short C calls: the GIL is not held for seconds)."""
    return np.stack([ndimage.binary_fill_holes(m) if m.any() else m for m in mask])


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float32))
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _scale_max(a: np.ndarray) -> np.ndarray:
    """[0, 1] by the maximum only: a map >= 0 keeps its zeros (no floor offset)."""
    a = np.nan_to_num(np.asarray(a, np.float32))       # a copy: the input is kept
    np.clip(a, 0, None, out=a)
    hi = float(a.max()) if a.size else 0.0
    if hi > 0:
        a /= np.float32(hi)
        return a
    return np.zeros_like(a)


def upsample_cam(cam: np.ndarray, shape: Sequence[int], centred: bool = True) -> np.ndarray:
    """(d, h, w) CAM -> ``shape`` by (tri)linear interpolation. ``centred``: cell centres map to
    cell centres (``align_corners=False``, the geometry of a strided feature map); else corners
    to corners (``scipy.ndimage.zoom``'s default, the legacy behaviour)."""
    cam = np.asarray(cam, np.float32)
    if not centred:
        return ndimage.zoom(cam, [t / s for t, s in zip(shape, cam.shape)], order=1)
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.ascontiguousarray(cam))
    with torch.no_grad():
        if cam.shape[0] == shape[0]:              # in-plane only (MIL slices)
            out = F.interpolate(t[:, None], size=tuple(shape[1:]), mode="bilinear",
                                align_corners=False)[:, 0]
        else:
            out = F.interpolate(t[None, None], size=tuple(shape), mode="trilinear",
                                align_corners=False)[0, 0]
    return out.numpy()


# -- mapping slice space -> reference grid ---------------------------------------------------
def slices_to_native(stack: np.ndarray, inp: Any, ref_shape: Sequence[int],
                     head: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, SIZE, SIZE) maps on the input slices -> (z, y, x) on the reference grid."""
    N, H, W = stack.shape
    nz, ny, nx = ref_shape
    if getattr(inp, "inplane", None) is None:          # pack: 2x2 binning of (n, 128, 128)
        planes = ndimage.zoom(stack, (1, ny / H, nx / W), order=1)
    else:
        cy, cx, fy, fx = inp.inplane
        yy = (np.arange(ny) - cy) * fy + (H - 1) / 2
        xx = (np.arange(nx) - cx) * fx + (W - 1) / 2
        Y, X = np.meshgrid(yy, xx, indexing="ij")
        planes = np.stack([ndimage.map_coordinates(s, [Y, X], order=1, mode="constant", cval=0.0)
                           for s in stack])
    out = np.zeros((nz, ny, nx), np.float32)
    zi = np.asarray(inp.slice_index, int)
    if len(zi) == 1:
        out[zi[0]] = planes[0]
    else:
        # linear interpolation between the chosen slices, zero outside their range
        for z in range(zi.min(), zi.max() + 1):
            k = int(np.searchsorted(zi, z))
            if k < len(zi) and zi[k] == z:
                out[z] = planes[k]
            else:
                z0, z1 = zi[k - 1], zi[k]
                w = (z - z0) / (z1 - z0)
                out[z] = (1 - w) * planes[k - 1] + w * planes[k]
    if head is not None:
        out *= head
    return out


# -- CAM computation -------------------------------------------------------------------------
def _cam_class(method: str):
    from torchcam.methods import GradCAM, GradCAMpp, LayerCAM
    return {"gradcam": GradCAM, "gradcam++": GradCAMpp, "layercam": LayerCAM}[method]


def _task_logits(member, kind: str, task: str, slice_mask, seq_mask, clinical):
    """Wrap one member so torchcam sees the (B, C) logits of one task."""
    import torch.nn as nn

    class TaskLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = member

        def forward(self, x):
            if kind == "volume3d":
                return self.m(x, seq_mask, clinical)["logits"][task]
            return self.m(x, slice_mask, seq_mask, clinical)["logits"][task]

    return TaskLogits()


def _members(module) -> List[Any]:
    return list(module.members) if hasattr(module, "members") else [module]


def _mil_cams(module, x, seq_mask, clinical, sequences, task, cls_idx, method, layer, cancel,
              normalized=False):
    """Per-sequence per-slice CAMs averaged over members: {seq: (N, h, w)} + attention (S, N).
    ``normalized=False``: the ReLU'd class evidence as is (torchcam would otherwise min-max
    normalise every slice on its own, making all slices equally strong)."""
    import torch

    N = x.shape[2]
    slm = torch.ones(1, N, dtype=torch.bool, device=x.device)
    cams: Dict[str, np.ndarray] = {}
    atts = []
    members = _members(module)
    for m in members:
        check(cancel)
        w = _task_logits(m, "mil", task, slm, seq_mask, clinical)
        names = [f"m.encoders.{s}.{layer}" for s in sequences]
        ex = _cam_class(method)(w, target_layer=names)
        try:
            with torch.enable_grad():
                xx = x.clone().requires_grad_(False)
                logits = w(xx)
                maps = ex(int(cls_idx), logits, normalized=normalized)
        finally:
            ex.remove_hooks()
        for s, mp in zip(sequences, maps):
            a = mp.detach().cpu().numpy().astype(np.float32)          # (N, h, w)
            cams[s] = cams.get(s, 0) + a / len(members)
        with torch.inference_mode():
            atts.append(m(x, slm, seq_mask, clinical)["attention"][0].cpu().numpy())
    return cams, np.mean(atts, axis=0)


def _cnn_cam(module, vol, seq_mask, clinical, task, cls_idx, method, layer, cancel,
             normalized=False):
    import torch

    acc = None
    members = _members(module)
    for m in members:
        check(cancel)
        w = _task_logits(m, "volume3d", task, None, seq_mask, clinical)
        ex = _cam_class(method)(w, target_layer=f"m.{layer}")
        try:
            with torch.enable_grad():
                logits = w(vol)
                mp = ex(int(cls_idx), logits, normalized=normalized)[0]
        finally:
            ex.remove_hooks()
        a = mp[0].detach().cpu().numpy().astype(np.float32)            # (d, h, w)
        acc = a / len(members) if acc is None else acc + a / len(members)
    return acc


def cam_layers(module, kind: str) -> List[str]:
    """The names ``layer`` (:func:`explain`) may take for a network of input ``kind``: the
    modules of one member's convolutional trunk (``net``: a stage such as ``net.layer3``, or a
    module inside one), whose outputs are the feature maps a CAM is drawn from. For a slice
    model the names are inside each sequence's encoder (all alike)."""
    member = _members(module)[0]
    root = next(iter(member.encoders.values())) if hasattr(member, "encoders") else member
    trunk = getattr(root, "net", None)
    if trunk is None:                    # another architecture: any module of the member
        return [n for n, _ in root.named_modules() if n]
    return [f"net.{n}" for n, _ in trunk.named_modules() if n]


def check_layer(lm, kind: str, layer: str, default: Optional[str] = None) -> None:
    """Refuse a ``layer`` that the network of ``lm`` (input ``kind``) does not have, with one
    line naming the valid ones (:func:`cam_layers`: the trunk's stages, and an example of a
    module inside one), before any work: torchcam would stop with a traceback."""
    names = cam_layers(lm.module, kind)
    if layer in names:
        return
    depth = 1 if names and all(n.startswith("net.") for n in names) else 0
    top = [n for n in names if n.count(".") == depth]
    default = default or DEFAULT_LAYER.get(kind, "")
    inner = next((n for n in names if n.startswith(default + ".")), None)
    raise ConfigError(f"unknown layer {layer!r} for {lm.name}; choose one of "
                      f"{', '.join(top or names)}"
                      + (f" (default {default})" if default in names else "")
                      + (f", or a module inside one (e.g. {inner})" if inner else ""))


def image_member(card: Dict[str, Any]) -> Optional[str]:
    """The first member of a late-fusion ensemble with an image network (its heatmap is the
    ensemble's), or None."""
    from .predict import member_cards
    names = list((card.get("input") or {}).get("members", []))
    # the kinds with a network layer to explain are those of DEFAULT_LAYER
    return next((n for n, c in zip(names, member_cards(card))
                 if (c.get("input") or {}).get("kind") in DEFAULT_LAYER), None)


def explained_kind(card: Dict[str, Any]) -> str:
    """The input kind whose heatmap methods apply to a model: its own, or for a late-fusion
    ensemble that of its image network (see :func:`explain`)."""
    from .models import find_model, read_card
    kind = (card.get("input") or {}).get("kind", "mil")
    if kind == "ensemble":
        net = image_member(card)
        return (read_card(find_model(net)).get("input") or {}).get("kind", "mil") if net else kind
    return kind


def explain(case, model=None, *, task: str = "idh", method: Optional[str] = None,
            target: Optional[str] = None, layer: Optional[str] = None,
            wt_mask: Optional[np.ndarray] = None, device: str = "auto",
            inputs=None, fusion: str = "raw", segmentation: Optional[np.ndarray] = None,
            localise: bool = True, cancel: Optional[CancelToken] = None,
            segmentation_source: str = "supplied by the caller",
            segmentation_synthetic: Sequence[str] = ()
            ) -> Iterator[Union[Progress, ExplainResult]]:
    """Heatmap for ``task`` of a prediction model on ``case`` (see the module docstring).

    ``method``: one of the model kind's :data:`KIND_METHODS` (default: its first, Grad-CAM for
    the networks, occlusion for ``predict_radiomics``, which has no image network);
    ``layer``: the torchcam target layer inside one member (default :data:`DEFAULT_LAYER`);
    ``fusion``: ``"raw"`` (default) or ``"legacy"`` (see the module docstring).

    ``target``: the class to explain (default: the positive class, e.g. ``mutant``);
    ``wt_mask``: a whole-tumour mask on the reference grid for the localisation score (default:
    the case's labels when present); ``inputs``: the ``SliceInput`` a prediction of this model
    on this same case already made (``PredictionResult.inputs``), to skip rebuilding it;
    ``segmentation``: labels on the reference grid for a segmentation-based model (default: it
    segments the case as its prediction does); ``localise``: with no ``wt_mask`` and no ground
    truth, segment the case (default segmentation model) for the localisation score;
    ``device``: where the networks (the heatmap's backward pass included) and a segmentation
    made here run (``auto``: the GPU when there is one).

    ``segmentation_source`` says where the caller's ``segmentation`` came from and
    ``segmentation_synthetic`` which synthetic sequences it (or, with ``inputs`` and no
    ``segmentation``, the one the prediction placed its window on) was made from, as for
    :func:`core.predict.predict`: a heatmap placed on it rests on them too, and the result
    lists them (``synthetic_inputs``) and says so in its warnings. A segmentation the
    explanation makes itself adds its own.
    """
    import torch

    from . import predict as P
    from .models import LoadedModel, load_model, resolve_device

    t0 = time.perf_counter()
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if method is not None and method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    legacy = fusion == "legacy"
    dev = resolve_device(device)         # the networks (and the segmentation) run there
    yield Progress("explain", 0, 4, "loading model")
    lm = model if isinstance(model, LoadedModel) else load_model(
        model or P.default_model_name(), task=P.TASK, device=dev)
    # a prediction's inputs given without its segmentation: where the case cannot be segmented
    # for the window, that prediction fell back to the whole-brain model and so does this
    lm, fallback = P.window_or_fallback(case, lm, explicit=P.named(model),
                                        segmenting=segmentation is None)
    card = lm.card
    kind = (card.get("input") or {}).get("kind", "mil")
    ensemble = lm.name if kind == "ensemble" else None
    if kind == "ensemble":
        # a late fusion has no image of its own: its image network is what a heatmap explains
        names = list(card["input"].get("members", []))
        net = image_member(card)
        if net is None:
            raise ConfigError(f"{lm.name} has no image network whose heatmap could be shown")
        others = [n for n in names if n != net]
        note = (f"{lm.name} is a late fusion of {', '.join(names)}: the heatmap explains its "
                f"image network {net}" + (f"; the other member(s) ({', '.join(others)}) "
                                          "contribute through their own inputs"
                                          if others else ""))
        lm = P.ensemble_members(lm)[net]             # shared with its predictions
        card = lm.card
        kind = (card.get("input") or {}).get("kind", "mil")
        fallback = "; ".join(v for v in (fallback, note) if v)
    if kind not in KIND_METHODS:
        raise ConfigError(f"{lm.name} is a {kind} model that cannot be explained here")
    method = method or KIND_METHODS[kind][0]
    if method not in KIND_METHODS[kind]:
        what = {"mil": "the slice model", "mil_roi": "the tumour-centred slice model",
                "volume3d": "the 3D CNN", "volume3d_roi": "the tumour-centred 3D CNN",
                "radiomics": f"{lm.name} (no image network: its features come from the "
                             "segmented tumour)"}[kind]
        if ensemble is not None:
            what = f"{ensemble}'s image network {lm.name}"
            if method in KIND_METHODS["radiomics"]:
                what += " (occlusion maps belong to predict_radiomics: --model predict_radiomics)"
        raise ConfigError(f"{method} does not apply to {what}; use "
                          + " or ".join(KIND_METHODS[kind]))
    classes = (card.get("classes") or P.CLASSES).get(task)
    if classes is None:
        raise ConfigError(f"model {lm.name} has no {task!r} head")
    target = target or classes[-1]
    if target not in classes:
        raise ConfigError(f"{target!r} is not a class of {task} ({', '.join(classes)})")
    cls_idx = classes.index(target)
    if layer is not None and kind in DEFAULT_LAYER:     # a bad name stops here, not in torchcam
        check_layer(lm, kind, layer, (LEGACY_LAYER if legacy else DEFAULT_LAYER)[kind])
    # the synthetic sequences of the caller's segmentation (or of the one the caller's inputs
    # were windowed on); tumour_labels adds those of a segmentation made here
    seg_synth = (list(segmentation_synthetic)
                 if segmentation is not None or inputs is not None else [])
    if kind == "radiomics":
        yield from _explain_radiomics(case, lm, task, target, cls_idx, wt_mask, segmentation,
                                      cancel, t0, segmentation_source, seg_synth, device=dev)
        return
    seqs = list(card.get("sequences") or [])
    required = list(card.get("required_sequences") or seqs)
    missing = [s for s in required if s not in case.sequences]
    if missing:
        from .errors import MissingSequenceError
        raise MissingSequenceError(missing, required, case.present)
    if case.kind != "slices":
        from .segment import check_brain_volume
        check_brain_volume(case)
    check(cancel)
    roi_mask = None
    details: Dict[str, Any] = {}
    warns: List[str] = [fallback] if fallback else []
    # the caller's segmentation the window rests on (its synthetic inputs are said here; a
    # segmentation made here has said its own in its warnings)
    supplied = (f"segmentation {segmentation_source}"
                if segmentation is not None or inputs is not None else None)
    if kind in P.ROI_KINDS and inputs is None:
        # the tumour the prediction centres on: the caller's segmentation or the case segmented
        labels, source = yield from P.tumour_labels(case, card, dev, cancel, segmentation,
                                                    segmentation_source, warns,
                                                    stage=("explain", 1, 4),
                                                    synthetic=seg_synth)
        roi_mask = labels > 0
        details = {"window_source": f"the tumour {source}"}
    yield Progress("explain", 1, 4, "preparing slices")
    if inputs is not None:
        inp = inputs
    elif kind in P.ROI_KINDS:
        inp = P.roi_case_to_input(case, seqs, roi_mask, card["input"].get("window"))
        warns.extend(P.window_warnings(case, inp))
    else:
        inp = P.case_to_input(case, seqs)
        warns.extend(P.offset_warnings(case, seqs))
    warns.extend(P.masked_warnings(seqs, inp))
    cvec = np.zeros(2, np.float32)
    if (card.get("clinical") or {}).get("used"):
        cvec, _ = P.clinical_vector(case.clinical, card)
    ref = case.sequences[case.reference]
    ref_shape = ref.array.shape
    # the heatmap is restricted to the head (3D cases and 2D packs alike: a pack's slices are
    # mostly background, which would otherwise hold most of the heatmap's mass)
    fg = np.zeros(ref_shape, bool)
    for s in seqs:
        if s in case.sequences and case.sequences[s].geometry.same_grid(ref.geometry):
            fg |= P.foreground(case.sequences[s].array)
    head = _fill_holes_2d(fg) if fg.any() else None
    yield Progress("explain", 2, 4, f"{method} for {task} = {target}")
    layer = layer or (LEGACY_LAYER if legacy else DEFAULT_LAYER)[kind]
    N, H, W = inp.x.shape[1:]           # the model's slices

    def network_maps(dev):
        """The heatmap stack on the model's slices, the slice attention per sequence and the
        network's probability of ``target``, computed on ``dev``."""
        module = lm.module.to(dev).eval()
        sm = torch.from_numpy(inp.seq_mask[None]).to(dev)
        cl = torch.from_numpy(cvec[None]).to(dev)
        weights: Dict[str, List[float]] = {}
        if kind in P.VOLUME_KINDS:
            vol = torch.from_numpy(P.to_volume3d(inp, int(card["input"]["depth"]))[None]).to(dev)
            cam = _cnn_cam(module, vol, sm, cl, task, cls_idx, method, layer, cancel,
                           normalized=legacy)
            stack = upsample_cam(cam, (N, H, W), centred=not legacy)
        else:
            x = torch.from_numpy(inp.x[None]).to(dev)
            if method == "attention":
                slm = torch.ones(1, N, dtype=torch.bool, device=dev)
                with torch.inference_mode():
                    att = np.mean([m(x, slm, sm, cl)["attention"][0].cpu().numpy()
                                   for m in _members(module)], axis=0)          # (S, N)
                used = att[inp.seq_mask]
                per_slice = used.mean(0) if len(used) else np.zeros(N)
                stack = np.repeat(per_slice[:, None, None], H, 1).repeat(W, 2).astype(np.float32)
                # restrict to the network's field of view of the head
                fov = (np.abs(inp.x[inp.seq_mask]).sum(0) > 0) if inp.seq_mask.any() else None
                if fov is not None:
                    stack = stack * fov
            else:
                cams, att = _mil_cams(module, x, sm, cl, seqs, task, cls_idx, method, layer,
                                      cancel, normalized=legacy)
                stack = np.zeros((N, H, W), np.float32)
                for i, s in enumerate(seqs):
                    if not inp.seq_mask[i]:
                        continue
                    c = upsample_cam(cams[s], (N, H, W), centred=not legacy)
                    if legacy:
                        c = c / (c.max() + 1e-8)
                    # the attention carries the between-slice weighting (not a per-slice norm)
                    stack += att[i][:, None, None] * np.clip(c, 0, None)
            for i, s in enumerate(seqs):
                if inp.seq_mask[i] and kind not in P.VOLUME_KINDS:
                    full = np.zeros(inp.n_ref_slices, np.float32)
                    full[inp.slice_index] = att[i]
                    weights[s] = [round(float(v), 6) for v in full]
        check(cancel)
        # the explained network's probability of the class its heatmap is for (the dock says it
        # beside the map: a map for "codel" is not a prediction of codel)
        out, _ = P.run_network(module, kind, inp, cvec, card, dev)   # the prediction's own pass
        return stack, weights, float(out["probs"][task][:, 0].mean(0)[cls_idx])

    (stack, weights, prob), ran = oom_fallback(network_maps, dev, models=[lm], warn=warns,
                                               what=f"the {method} map of {lm.name} was made")
    details = dict(details or {})
    details["probability"] = prob
    details["probability_model"] = lm.name
    yield Progress("explain", 3, 4, "mapping to the case grid")
    heat = slices_to_native(stack.astype(np.float32), inp, ref_shape, head)
    heat = _minmax(heat) if legacy else _scale_max(heat)
    wt_mask, mask_source = _ground_truth_or(case, wt_mask)
    if wt_mask is None and roi_mask is not None:
        wt_mask, mask_source = roi_mask, "segmentation"
    loc_synth: List[str] = []
    if wt_mask is None and localise:
        wt_mask, mask_source = yield from _segmentation_mask(case, card, cancel, warns,
                                                             loc_synth, device=dev)
    loc = None
    if wt_mask is not None:
        g = ref.geometry
        loc = localisation_score(heat, wt_mask, (g.spacing[2], g.spacing[1], g.spacing[0]))
    _say_in_sample(case, lm, loc, warns)
    # as the prediction: the model's own synthetic inputs, then those of the segmentation its
    # window was placed on (a slice or 3D model places nothing on one)
    synth = P.synthetic_used(case, seqs, seg_synth if kind in P.ROI_KINDS else [], warns,
                             supplied if kind in P.ROI_KINDS else None)
    # the segmentation made here for the localisation score (its own warnings are not kept)
    loc_only = sorted(s for s in set(loc_synth) if s not in synth)
    if loc_only:
        warns.append(synthetic_note(loc_only, f", through the tumour {mask_source} the "
                                    "localisation score is measured on",
                                    SYNTHETIC_SEGMENTATION))
    yield Progress("explain", 4, 4, "done")
    yield ExplainResult(case_id=case.case_id, task=task, method=method, model=lm.name,
                        target_class=target, heatmap=heat.astype(np.float32, copy=False),
                        geometry=ref.geometry, localisation=loc, mask_source=mask_source,
                        slice_weights=weights, warnings=warns,
                        seconds=time.perf_counter() - t0, details=details,
                        synthetic_inputs=synth + loc_only, device=ran)


def _say_in_sample(case, lm, loc: Optional[float], warns: List[str]) -> None:
    """A localisation score on a case the explained model was trained on is in-sample: said
    (``core.insample``, the check of the segmentation and prediction)."""
    from .insample import LOCALISATION, case_in_sample_note
    note = case_in_sample_note(case, lm.name, lm.card, LOCALISATION) if loc is not None \
        else None
    if note is not None:
        warns.append(note)


def _segmentation_mask(case, card, cancel, warns: List[str],
                       synthetic: Optional[List[str]] = None, *, device: str):
    """No tumour mask given and no ground truth: the whole tumour as the default segmentation
    model for the case's kind segments it (the issue's "else the segmentation"), with its
    source; ``(None, None)`` and a warning when it cannot be segmented. The synthetic sequences
    it was made from are added to ``synthetic``."""
    from . import predict as P
    try:
        labels, name, _ = yield from P._segment_for(case, card, device, cancel,
                                                    stage=("explain", 3, 4),
                                                    synthetic=synthetic)
    except RadiogenError as e:
        warns.append(f"no localisation score: the case could not be segmented ({e})")
        return None, None
    return labels > 0, f"segmentation ({name})"


def _ground_truth_or(case, wt_mask):
    """The localisation mask: ``wt_mask`` when given, else the case's labels on its reference
    grid; with its source ("segmentation" / "ground truth" / None)."""
    ref = case.sequences[case.reference]
    if wt_mask is not None:
        return wt_mask, "segmentation"
    if case.labels is not None and case.labels.geometry.same_grid(ref.geometry):
        return case.labels.array > 0, "ground truth"
    return None, None


def _explain_radiomics(case, lm, task, target, cls_idx, wt_mask, segmentation, cancel, t0,
                       segmentation_source: str = "supplied by the caller",
                       seg_synth: Optional[List[str]] = None, *, device: str):
    """Occlusion map of a segment-then-classify model (``predict_radiomics``): which blocks of
    the segmented tumour the probability of ``target`` rests on (core.radiomics.occlusion_map).
    The map is zero outside the model's own mask: its features see nothing else (but the head
    medians that normalise the intensities). The mask is the caller's ``segmentation`` (made
    from the synthetic sequences ``seg_synth``) or the case segmented as its prediction
    does."""
    import torch

    from . import predict as P
    from .radiomics import FEATURES, case_arrays, clinical_features, occlusion_map

    card = lm.card
    if list(card["input"].get("features", FEATURES)) != list(FEATURES):
        raise ConfigError(f"{lm.name} was made with another feature set than this version "
                          "computes; retrain it (scripts/cv_prediction.py --models radiomics)")
    required = list(card.get("required_sequences") or [])
    missing = [s for s in required if s not in case.sequences]
    if missing:
        from .errors import MissingSequenceError
        raise MissingSequenceError(missing, required, case.present)
    ref = case.sequences[case.reference]
    warns: List[str] = []
    supplied = segmentation is not None
    seg_synth = list(seg_synth or []) if supplied else []
    # the mask its prediction uses: the caller's segmentation (checked to lie on the reference
    # grid) or the case segmented by the model its card names; the synthetic sequences it was
    # made from are added to seg_synth
    labels, source = yield from P.tumour_labels(case, card, device, cancel, segmentation,
                                                segmentation_source, warns,
                                                stage=("explain", 1, 4), synthetic=seg_synth)
    check(cancel)
    mask = labels > 0
    if not mask.any():
        warns.append("no tumour was segmented: nothing to explain (the heatmap is empty)")
    yield Progress("explain", 2, 4, f"occlusion for {task} = {target}")

    def occlusion(dev):
        module = lm.module.to(dev).eval()

        def probability(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = module(torch.from_numpy(x).to(dev))
            return out["probs"][task][0, :, cls_idx].cpu().numpy()  # (1, B, C) -> (B,)

        return (yield from occlusion_map(case_arrays(case), mask, ref.geometry.spacing,
                                         clinical_features(case.clinical), probability,
                                         cancel=cancel))

    (heat, info), ran = yield from oom_fallback_iter(
        occlusion, device, models=[lm], warn=warns, what=f"the occlusion map of {lm.name} was made")
    if mask.any() and info["max_change"] == 0:
        warns.append(f"removing any one block of the tumour ({info['block_mm']:.0f} mm) leaves "
                     f"the {target} probability unchanged: the heatmap is empty")
    if case.kind != "slices":
        warns.append("3D volume: the radiomics model was trained on TCGA-LGG slice packs; this "
                     "input is outside its validated domain")
    synth = P.synthetic_used(case, ("flair", "t1", "t1ce"), seg_synth, warns,
                             source if supplied else None)
    yield Progress("explain", 3, 4, "scoring")
    heat = _scale_max(heat)
    gt, mask_source = _ground_truth_or(case, wt_mask)
    loc = None
    if gt is not None:
        g = ref.geometry
        loc = localisation_score(heat, gt, (g.spacing[2], g.spacing[1], g.spacing[0]))
    _say_in_sample(case, lm, loc, warns)
    yield Progress("explain", 4, 4, "done")
    yield ExplainResult(case_id=case.case_id, task=task, method="occlusion", model=lm.name,
                        target_class=target, heatmap=heat, geometry=ref.geometry,
                        localisation=loc, mask_source=mask_source, warnings=warns,
                        seconds=time.perf_counter() - t0,
                        details={**info, "mask": "segmentation supplied" if supplied else source},
                        synthetic_inputs=synth, device=ran)


#: the 3D rendering of a finer grid starts from every k-th voxel, about this spacing (mm)
RENDER_GRID_MM = 1.0


def render_explanation(case, result: ExplainResult, out_png, out_gif=None,
                       labels: Optional[np.ndarray] = None, n_frames: int = 24) -> Dict[str, str]:
    """Off-screen 3D rendering (brain translucent, tumour regions, heatmap iso-surfaces)."""
    from .render import render_3d

    ref = case.sequences[case.reference]
    if case.kind == "slices":
        raise RadiogenError("3D rendering needs a 3D case (this is a 2D slice pack)")
    g = ref.geometry
    from . import predict as P
    # a grid finer than RENDER_GRID_MM is taken every k-th voxel first: the rendering is
    # downsampled further anyway, and the brain surface's morphology keeps its size in mm (a
    # 1 mm case is drawn as before)
    sp_zyx = (g.spacing[2], g.spacing[1], g.spacing[0])
    step = tuple(max(1, int(np.floor(RENDER_GRID_MM / s + 1e-6))) for s in sp_zyx)
    sub = tuple(slice(None, None, k) for k in step)
    brain = None
    for v in case.sequences.values():
        if v.geometry.same_grid(g):
            fg = P.foreground(v.array[sub])
            brain = fg if brain is None else brain | fg
    if brain is None:
        brain = np.zeros(ref.array[sub].shape, bool)
    brain = ndimage.binary_fill_holes(ndimage.binary_opening(brain, iterations=2))
    if labels is None and case.labels is not None and case.labels.geometry.same_grid(g):
        labels = case.labels.array
    title = f"{case.case_id}  {result.task} ({result.target_class})  {result.method}"
    if result.localisation is not None:
        title += f"  localisation {result.localisation:.2f}"
    return render_3d(brain=brain, labels=None if labels is None else np.asarray(labels)[sub],
                     heatmap=np.asarray(result.heatmap)[sub],
                     spacing_zyx=tuple(s * k for s, k in zip(sp_zyx, step)), out_png=out_png,
                     out_gif=out_gif, n_frames=n_frames, title=title)
