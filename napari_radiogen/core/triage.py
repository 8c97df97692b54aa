"""Tumour-type triage of 2D slices: glioma / meningioma / pituitary tumour / no tumour.

One normalisation serves 8-bit PNG/JPG slices (the public 2D collections the models were trained
on) and axial slices of a real 3D case (NIfTI intensities of any range):

1. foreground = pixels above 5% of the slice's 99th percentile (drops the near-black
   background and its noise; works for uint8 and for MRI intensities);
2. crop to the foreground's bounding box (+2 px margin), pad the crop to a square with zeros
   (centred), resize to the model's ``input_size`` (bilinear, antialiased);
3. scale intensities by the 99.5th percentile of the foreground pixels and clip to [0, 1]
   (the background stays 0). A slice with no foreground -- all zero, or constant: no contrast
   at all -- is *empty*: it becomes all zeros, and results mark it (``SliceTriage.empty``,
   ``TriageTable.empty``) so that no tumour call is made of it (``SliceTriage.call`` is None;
   ``TriageTable.counts`` leaves it out).

The models see single-channel ``input_size`` x ``input_size`` tensors in [0, 1]. They were
trained on slices with skull; :func:`domain_caveat` says when an image looks skull-stripped
(BraTS-like) instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import progress as _progress
from .errors import CaseLoadError, RadiogenError
from .progress import CancelToken, Progress

TASK = "triage"
CLASSES: Tuple[str, ...] = ("glioma", "meningioma", "pituitary", "notumor")
CLASS_NAMES: Dict[str, str] = {"glioma": "glioma", "meningioma": "meningioma",
                               "pituitary": "pituitary tumour", "notumor": "no tumour"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_SIZE = 64
FG_FRACTION = 0.05
SCALE_PERCENTILE = 99.5
MARGIN = 2

NORMALISATION_DOC = (
    "per slice: foreground = pixels > 5% of the slice's 99th percentile; crop to the foreground "
    "bounding box (+2 px), zero-pad to a centred square, resize (bilinear, antialiased) to "
    "input_size x input_size; divide by the 99.5th percentile of the foreground pixels and clip "
    "to [0, 1] (background 0; empty slice -> zeros). Same for 8-bit PNG slices and for axial "
    "slices of a 3D case (any intensity range; negative values are clipped to 0).")

TRIAGE_NOTE = ("Trained on 2D MRI slices from public collections (Kaggle 'Brain Tumor MRI "
               "Dataset': figshare, SARTAJ, Br35H; mixed sequences, mostly with skull). A triage "
               "aid for research, not a diagnosis; slices unlike these (e.g. skull-stripped "
               "BraTS volumes) may be misclassified.")

SKULL_STRIPPED_CAVEAT = ("looks skull-stripped ({why}); the model was trained on slices with "
                         "skull: this call may be wrong")

SKULL_STRIPPED_IMAGES_CAVEAT = ("{n} of {m} images look skull-stripped (zero background around "
                                "the brain: {examples}); the model was trained on slices with "
                                "skull: their calls may be wrong")

PLANE_NAMES = ("axial", "coronal", "sagittal")   # axes 0, 1, 2 of a (z, y, x) LPS volume


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropInfo:
    """Where a normalised slice came from: its foreground box in the source slice, and the
    placement of that box in the padded square (for mapping heatmaps back)."""
    shape: Tuple[int, int]
    box: Tuple[int, int, int, int]          # r0, r1, c0, c1 in the source slice
    square: int                             # side of the padded square (source pixels)
    offset: Tuple[int, int]                 # y0, x0 of the box inside the square


def _crop_square(img: np.ndarray):
    """Foreground crop padded to a square: (square float32 array, scale, CropInfo), or
    (None, None, None) when the slice is empty."""
    a = np.asarray(img, dtype=np.float32)
    a = np.where(np.isfinite(a), a, 0.0)
    a = np.maximum(a, 0.0)
    if a.size == 0 or float(a.max()) <= float(a.min()):     # all zero, or constant: empty
        return None, None, None
    hi = float(np.percentile(a, 99))
    if hi <= 0:
        hi = float(a.max())
        if hi <= 0:
            return None, None, None
    fg = a > FG_FRACTION * hi
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None, None, None
    scale = float(np.percentile(a[fg], SCALE_PERCENTILE))
    if scale <= 0:
        return None, None, None
    r0, r1 = max(int(rows[0]) - MARGIN, 0), min(int(rows[-1]) + MARGIN + 1, a.shape[0])
    c0, c1 = max(int(cols[0]) - MARGIN, 0), min(int(cols[-1]) + MARGIN + 1, a.shape[1])
    crop = a[r0:r1, c0:c1]
    h, w = crop.shape
    n = max(h, w)
    sq = np.zeros((n, n), dtype=np.float32)
    y0, x0 = (n - h) // 2, (n - w) // 2
    sq[y0:y0 + h, x0:x0 + w] = crop
    return sq, scale, CropInfo(shape=tuple(a.shape), box=(r0, r1, c0, c1), square=n,
                               offset=(y0, x0))


def normalise_slices(slices: Sequence[np.ndarray], size: int = DEFAULT_SIZE,
                     return_info: bool = False):
    """Normalise 2D slices (any shapes, any intensity range) to an (n, 1, size, size) float32
    array in [0, 1] (see the module docstring). With ``return_info`` also a list of
    :class:`CropInfo` (None for empty slices)."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((len(slices), 1, size, size), dtype=np.float32)
    infos: List[Optional[CropInfo]] = []
    for i, s in enumerate(slices):
        s = np.asarray(s)
        if s.ndim == 3 and s.shape[-1] in (3, 4):      # RGB(A) image -> grey
            s = s[..., :3].astype(np.float32).mean(axis=-1)
        if s.ndim != 2:
            raise RadiogenError(f"expected a 2D slice, got an array of shape {s.shape}")
        sq, scale, info = _crop_square(s)
        infos.append(info)
        if sq is None:
            continue
        t = torch.from_numpy(sq)[None, None]
        if sq.shape[0] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=sq.shape[0] > size)
        out[i, 0] = np.clip(t[0, 0].numpy() / scale, 0.0, 1.0)
    return (out, infos) if return_info else out


def normalise_slice(img: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """One slice -> (size, size) float32 in [0, 1]."""
    return normalise_slices([img], size)[0, 0]


def to_source_grid(heat: np.ndarray, info: Optional[CropInfo], shape: Tuple[int, int]
                   ) -> np.ndarray:
    """Map a (size, size) map on the normalised slice back onto the source slice grid."""
    import torch
    import torch.nn.functional as F

    out = np.zeros(shape, dtype=np.float32)
    if info is None:
        return out
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    sq = F.interpolate(t, size=(info.square, info.square), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    r0, r1, c0, c1 = info.box
    y0, x0 = info.offset
    out[r0:r1, c0:c1] = sq[y0:y0 + (r1 - r0), x0:x0 + (c1 - c0)]
    return out


def read_image(path: Union[str, Path]) -> np.ndarray:
    """A 2D image file (PNG/JPG/TIF/BMP) as a grey 2D array."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
            else:
                arr = np.asarray(im.convert("L"))
    except Exception as e:
        raise CaseLoadError(f"{path}: cannot read as an image ({e})") from None
    if arr.ndim != 2:
        raise CaseLoadError(f"{path}: expected a 2D grey image, got shape {arr.shape}")
    return arr


def _zero_background(a: np.ndarray) -> bool:
    """True when the background is exactly 0 around something (2D slice or 3D volume):
    :func:`napari_radiogen.core.prepare.is_skull_stripped`, except that a blank (all-zero)
    image has nothing to judge. Scans with skull, and the 8-bit slices the models were trained
    on, have noise there (few exact zeros)."""
    from .prepare import is_skull_stripped

    a = np.asarray(a)
    return bool(a.size) and bool(np.any(a)) and is_skull_stripped(a)


def domain_caveat(array: Optional[np.ndarray] = None, case_id: Optional[str] = None
                  ) -> Optional[str]:
    """A caveat when the image is unlike the training slices (which mostly show the skull):
    a BraTS case (by ``case_id``), or a 2D slice / 3D volume whose background is exactly 0
    around the brain (skull-stripped). None otherwise."""
    why = []
    if case_id and str(case_id).lower().startswith("brats"):
        why.append("a BraTS case")
    if array is not None and _zero_background(array):
        why.append("zero background around the brain")
    return SKULL_STRIPPED_CAVEAT.format(why=", ".join(why)) if why else None


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
PREFERRED_MODELS = ("triage_resnet", "triage_vit")


def load_triage_model(name: Optional[str] = None, device: str = "cpu"):
    """Load a triage model by name or path (default: the shipped CNN)."""
    from .models import default_model, load_model

    return load_model(name or default_model(TASK, prefer=PREFERRED_MODELS), task=TASK,
                      device=device)


def model_input_size(model) -> int:
    size = (getattr(model, "card", None) or {}).get("input_size") or DEFAULT_SIZE
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def model_classes(model) -> Tuple[str, ...]:
    return tuple((getattr(model, "card", None) or {}).get("classes") or CLASSES)


def _module(model):
    return getattr(model, "module", model)


def predict_normalised(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (n, n_classes) of already normalised (n, 1, s, s) slices."""
    import torch

    net = _module(model)
    dev = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(dev)
            out.append(torch.softmax(net(xb).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model_classes(model))), np.float32)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class SliceTriage:
    """Probabilities of one slice."""
    probs: Dict[str, float]
    predicted: str                           # the model's argmax (also for an empty slice)
    empty: bool = False                      # the slice had no foreground (all zero or
                                             # constant): probs are the model's answer to a
                                             # black image, not a call

    @property
    def confidence(self) -> float:
        return float(self.probs[self.predicted])

    @property
    def call(self) -> Optional[str]:
        """The tumour call: the predicted class, or None for an empty slice."""
        return None if self.empty else self.predicted


@dataclass
class TriageTable:
    """Per-image (or per-slice) probabilities; ``rows`` as written to ``tumour_type.csv``."""
    names: List[str]
    probs: np.ndarray                        # (n, n_classes)
    classes: Tuple[str, ...] = CLASSES
    model: str = ""
    case_id: Optional[str] = None
    sequence: Optional[str] = None
    empty: List[bool] = field(default_factory=list)
    axis: int = 0                            # slicing axis of the volume (0: axial of z, y, x)
    caveat: Optional[str] = None             # see :func:`domain_caveat`
    # images that could not be read (``classify_images(skip_unreadable=True)``): (name, why),
    # not in ``names``/``probs``; written as rows with status ``failed``
    failed: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def predicted(self) -> List[str]:
        """The model's argmax per row (empty slices included: see :attr:`calls`)."""
        return [self.classes[int(i)] for i in self.probs.argmax(1)] if len(self.probs) else []

    @property
    def calls(self) -> List[Optional[str]]:
        """The tumour call per row: the predicted class, or None for an empty slice."""
        empty = list(self.empty) + [False] * (len(self.names) - len(self.empty))
        return [None if e else p for p, e in zip(self.predicted, empty)]

    @property
    def n_empty(self) -> int:
        return int(sum(bool(e) for e in self.empty))

    def counts(self) -> Dict[str, int]:
        """Calls per class (every class listed), empty slices left out (see :attr:`n_empty`)."""
        calls = self.calls
        return {c: calls.count(c) for c in self.classes}

    def rows(self) -> List[Dict[str, Any]]:
        """One row per slice: ``file``, a probability per class, ``predicted`` (the call: empty
        for an empty slice, which gets none), ``empty`` (1 for a slice with no foreground),
        ``status`` (``ok``) and ``message``; then one row per image that could not be read
        (:attr:`failed`: no probabilities, ``status`` ``failed``, the reason in ``message``)."""
        out = []
        for name, p, call in zip(self.names, self.probs, self.calls):
            row: Dict[str, Any] = {"file": name}
            row.update({c: round(float(v), 6) for c, v in zip(self.classes, p)})
            row["predicted"] = call or ""
            row["empty"] = int(call is None)
            row.update(status="ok", message="")
            out.append(row)
        for name, why in self.failed:
            out.append({"file": name, **{c: "" for c in self.classes}, "predicted": "",
                        "empty": "", "status": "failed", "message": why})
        return out

    def write_csv(self, path: Union[str, Path]) -> Path:
        import csv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", *self.classes, "predicted", "empty",
                                              "status", "message"])
            w.writeheader()
            w.writerows(self.rows())
        return path


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def classify_slice(array2d: np.ndarray, model) -> SliceTriage:
    """Classify one 2D slice (any intensity range). Fast path: no generator, no progress."""
    size = model_input_size(model)
    x, infos = normalise_slices([array2d], size, return_info=True)
    p = predict_normalised(model, x)[0]
    classes = model_classes(model)
    return SliceTriage(probs={c: float(v) for c, v in zip(classes, p)},
                       predicted=classes[int(p.argmax())], empty=infos[0] is None)


def collect_images(path: Union[str, Path]) -> List[Tuple[str, Path]]:
    """(name, path) of an image file, or of every image under a folder (recursive, sorted;
    names relative to the folder, with forward slashes)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTS:
            raise CaseLoadError(f"{path}: not an image ({', '.join(IMAGE_EXTS)})")
        return [(path.name, path)]
    if not path.is_dir():
        raise CaseLoadError(f"{path}: no such file or folder")
    out = [(f.relative_to(path).as_posix(), f) for f in sorted(path.rglob("*"))
           if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    return out


def is_image_input(path: Union[str, Path]) -> bool:
    """True if ``path`` is an image file, or a folder holding images but no volume files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in IMAGE_EXTS
    if path.is_dir():
        vol_suffixes = (".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".hdf5", ".dcm")
        files = [f for f in path.rglob("*") if f.is_file()]
        has_img = any(f.suffix.lower() in IMAGE_EXTS for f in files)
        has_vol = any(f.suffix.lower() in vol_suffixes for f in files)
        return has_img and not has_vol
    return False


def classify_images(paths: Union[str, Path, Sequence[Union[str, Path]]], model,
                    cancel: Optional[CancelToken] = None, batch_size: int = 64,
                    skip_unreadable: bool = False
                    ) -> Iterator[Union[Progress, TriageTable]]:
    """Generator: classify image files (a file, a folder searched recursively, or a list of
    files). Yields Progress, then a :class:`TriageTable` (names relative to the folder) whose
    ``caveat`` says how many images look skull-stripped (:func:`images_caveat`), if any.

    An image that cannot be read raises its :class:`CaseLoadError`; with ``skip_unreadable``
    it is left out of the classified ones and listed in the table's ``failed`` (its name, and
    why, naming it by that name, not by its full path), and the others are classified (a batch
    that goes on past a bad item, as ``radiogen classify-slices`` runs it)."""
    if isinstance(paths, (str, Path)):
        items = collect_images(paths)
    else:
        items = [(Path(p).name, Path(p)) for p in paths]
    if not items:
        raise CaseLoadError(f"no images ({', '.join(IMAGE_EXTS)}) found in {paths}")
    size = model_input_size(model)
    probs, empty, stripped = [], [], []
    names: List[str] = []
    failed: List[Tuple[str, str]] = []
    total = len(items)
    yield Progress("classify", 0, total, "reading images")
    for i in range(0, total, batch_size):
        _progress.check(cancel)
        chunk = items[i:i + batch_size]
        read, imgs = [], []
        for name, p in chunk:
            try:
                img = read_image(p)
            except CaseLoadError as e:
                if not skip_unreadable:
                    raise
                why = str(e)            # the file by its name, not its full path
                for full in sorted({str(Path(p).absolute()), str(p)}, key=len, reverse=True):
                    why = why.replace(full, name)
                failed.append((name, why))
                continue
            read.append(name)
            imgs.append(img)
        if imgs:
            x, infos = normalise_slices(imgs, size, return_info=True)
            probs.append(predict_normalised(model, x))
            empty += [inf is None for inf in infos]
            names += read
            stripped += [name for name, img in zip(read, imgs) if _zero_background(img)]
        yield Progress("classify", min(i + batch_size, total), total)
    classes = model_classes(model)
    yield TriageTable(names=names,
                      probs=np.concatenate(probs) if probs else np.zeros((0, len(classes)),
                                                                         np.float32),
                      classes=classes, model=getattr(model, "name", ""),
                      empty=empty, caveat=images_caveat(stripped, len(names)), failed=failed)


def images_caveat(stripped: Sequence[str], total: int, shown: int = 3) -> Optional[str]:
    """The caveat of a set of images, ``stripped`` of them (names) looking skull-stripped
    (:func:`domain_caveat`): "N of M images look skull-stripped (...: a.png, b.png, ...)";
    None when none does."""
    if not stripped:
        return None
    names = ", ".join(list(stripped)[:shown]) + (", ..." if len(stripped) > shown else "")
    return SKULL_STRIPPED_IMAGES_CAVEAT.format(n=len(stripped), m=total, examples=names)


def _volume_of(volume_or_case, sequence: Optional[str] = None):
    """(array (z, y, x), case_id, sequence) of a Volume, a Case (its reference sequence or
    ``sequence``) or a plain 3D array."""
    from .case import Case, Volume

    if isinstance(volume_or_case, Case):
        seq = sequence or volume_or_case.reference
        if seq not in volume_or_case.sequences:
            from .errors import MissingSequenceError
            raise MissingSequenceError([seq], [seq], volume_or_case.present)
        return volume_or_case.sequences[seq].array, volume_or_case.case_id, seq
    if isinstance(volume_or_case, Volume):
        return volume_or_case.array, None, None
    arr = np.asarray(volume_or_case)
    if arr.ndim != 3:
        raise RadiogenError(f"expected a 3D volume (z, y, x), got an array of shape {arr.shape}")
    return arr, None, None


def classify_volume(volume_or_case, model, cancel: Optional[CancelToken] = None,
                    sequence: Optional[str] = None, batch_size: int = 64, axis: int = 0,
                    case_id: Optional[str] = None
                    ) -> Iterator[Union[Progress, TriageTable]]:
    """Generator: classify every slice along ``axis`` (default 0: the axial slices
    ``array[z]``; a slice keeps the other two axes in their order) of a volume or of a case's
    reference sequence. Yields Progress, then a :class:`TriageTable` with names
    ``<case_id>:<index>`` (``case_id`` names a plain array's case), its ``axis``, the
    ``empty`` slices and the :func:`domain_caveat` of the volume."""
    arr, cid, seq = _volume_of(volume_or_case, sequence)
    case_id = case_id or cid
    if not -3 <= axis < 3:
        raise RadiogenError(f"axis {axis} is not an axis of a 3D volume")
    axis = axis % 3
    size = model_input_size(model)
    n = arr.shape[axis]
    probs, empty = [], []
    yield Progress("classify slices", 0, n)
    for z0 in range(0, n, batch_size):
        _progress.check(cancel)
        sl = [np.take(arr, z, axis=axis) for z in range(z0, min(z0 + batch_size, n))]
        x, infos = normalise_slices(sl, size, return_info=True)
        probs.append(predict_normalised(model, x))
        empty += [inf is None for inf in infos]
        yield Progress("classify slices", min(z0 + batch_size, n), n)
    prefix = case_id or "volume"
    yield TriageTable(names=[f"{prefix}:{z}" for z in range(n)],
                      probs=(np.concatenate(probs) if probs
                             else np.zeros((0, len(model_classes(model))), np.float32)),
                      classes=model_classes(model), model=getattr(model, "name", ""),
                      case_id=case_id, sequence=seq, empty=empty, axis=axis,
                      caveat=domain_caveat(np.asarray(arr), case_id))


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------
@dataclass
class SliceCAM:
    heatmap: np.ndarray                      # on the source slice grid, [0, 1]
    class_name: str
    triage: SliceTriage


def _vit_token_cam(net, layer_name: str, x, class_idx: Optional[int]):
    """Grad-CAM on the patch tokens of a ViT block (token grid, CLS token dropped)."""
    import torch

    layer = dict(net.named_modules())[layer_name]
    store: Dict[str, Any] = {}

    def hook(_m, _i, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.retain_grad()
        store["act"] = out

    h = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            logits = net(xg)
            idx = int(logits.argmax(1)[0]) if class_idx is None else int(class_idx)
            net.zero_grad(set_to_none=True)
            logits[0, idx].backward()
            act, grad = store["act"][0, 1:], store["act"].grad[0, 1:]     # (N, D)
            w = grad.mean(dim=0)
            cam = torch.relu((act * w).sum(-1)).detach()
    finally:
        h.remove()
        net.zero_grad(set_to_none=True)
    g = int(round(cam.numel() ** 0.5))
    return cam.reshape(g, g).cpu().numpy(), logits.detach()


def gradcam_slice(array2d: np.ndarray, model, class_name: Optional[str] = None) -> SliceCAM:
    """2D Grad-CAM (torchcam for the CNN, token Grad-CAM for the ViT) of one slice, for the
    predicted class or ``class_name``; the heatmap is mapped back onto the slice grid."""
    import torch
    import torch.nn.functional as F

    from src_models.triage import ViTLogits, cam_target_layer

    net = _module(model)
    size = model_input_size(model)
    classes = model_classes(model)
    x_np, infos = normalise_slices([array2d], size, return_info=True)
    dev = next(net.parameters()).device
    x = torch.from_numpy(x_np).to(dev)
    idx = None if class_name is None else classes.index(class_name)
    layer = cam_target_layer(net)
    was_training = net.training
    net.eval()
    try:
        if isinstance(net, ViTLogits):
            cam, logits = _vit_token_cam(net, layer, x, idx)
        else:
            from torchcam.methods import GradCAM
            with torch.enable_grad(), GradCAM(net, target_layer=layer) as extractor:
                logits = net(x)
                cidx = int(logits.argmax(1)[0]) if idx is None else idx
                cam = extractor(cidx, logits)[0][0].detach().cpu().numpy()
                logits = logits.detach()
    finally:
        net.train(was_training)
        net.zero_grad(set_to_none=True)
    cam = np.nan_to_num(cam.astype(np.float32))
    if cam.max() > 0:
        cam = cam / cam.max()
    t = torch.from_numpy(cam)[None, None]
    cam = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    cam[x_np[0, 0] <= 0] = 0.0            # no heat on the background
    p = torch.softmax(logits.float(), 1)[0].cpu().numpy()
    tri = SliceTriage(probs={c: float(v) for c, v in zip(classes, p)},
                      predicted=classes[int(p.argmax())], empty=infos[0] is None)
    heat = to_source_grid(cam, infos[0], tuple(np.asarray(array2d).shape[:2]))
    return SliceCAM(heatmap=heat, class_name=class_name or tri.predicted, triage=tri)


# ---------------------------------------------------------------------------------------------
# benchmark helper (used by `radiogen bench`)
# ---------------------------------------------------------------------------------------------
def bench_triage(model=None, volume=None, repeats: int = 20) -> Dict[str, Any]:
    """Time one-slice and whole-volume classification (and one Grad-CAM) with the current
    torch thread settings. ``volume`` defaults to the bundled sample case's reference
    sequence. Returns seconds (medians)."""
    import torch

    t0 = time.perf_counter()
    model = model or load_triage_model()
    t_load = time.perf_counter() - t0
    if volume is None:
        from .sample import load_sample_case
        volume = load_sample_case()
    arr, case_id, seq = _volume_of(volume)
    z = arr.shape[0] // 2
    classify_slice(arr[z], model)                       # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classify_slice(arr[z], model)
        ts.append(time.perf_counter() - t0)
    tv = []
    for _ in range(3):
        t0 = time.perf_counter()
        _progress.run(classify_volume(arr, model))
        tv.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    gradcam_slice(arr[z], model)
    t_cam = time.perf_counter() - t0
    return {"model": getattr(model, "name", ""), "threads": torch.get_num_threads(),
            "load_s": t_load, "one_slice_s": float(np.median(ts)),
            "volume_s": float(np.median(tv)), "volume_slices": int(arr.shape[0]),
            "gradcam_s": t_cam, "case_id": case_id, "sequence": seq}
