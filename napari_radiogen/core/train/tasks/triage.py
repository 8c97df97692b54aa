"""TrainTask ``triage-2d``: tumour type (glioma / meningioma / pituitary / no tumour) of single
2D MRI slices, from a folder ``<data>/<class>/*.png|jpg|tif`` (e.g. the Kaggle "Brain Tumor MRI
Dataset" in ``../shared/data/brain-tumour-4class/train``).

* Exact duplicates (same file bytes, SHA-256) are de-duplicated before any split: one image is
  kept per hash, its ``group`` is the hash, and the dropped copies are listed in its record, so
  no copy of a held-out image is ever trained on. Folds are stratified by class.
* Every image is normalised once with :func:`napari_radiogen.core.triage.normalise_slices`
  (the same function inference uses) at ``model.input_size`` and cached (``.npz``) in the user
  cache folder, keyed by the file list and the size.

Config ``model``: ``arch: resnet | vit``, ``input_size`` (default 64), and the builder's
keyword arguments (see ``src_models/triage.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ConfigError
from ...models import file_sha256
from ...triage import CLASSES, IMAGE_EXTS, NORMALISATION_DOC, normalise_slices, read_image
from ..base import PatientRecord, TrainTask, register_task

CITATIONS = [
    "Msoud Nickparvar, Brain Tumor MRI Dataset, Kaggle (2021), doi:10.34740/KAGGLE/DSV/2645886 "
    "(licence stated by third parties as CC0)",
    "Cheng J. et al., Enhanced performance of brain tumor classification via tumor region "
    "augmentation and partition, PLoS ONE 10(10):e0140381, 2015 (figshare set)",
    "Bhuvaji S. et al., Brain Tumor Classification (MRI), Kaggle 2020 (SARTAJ set)",
    "Hamada A., Br35H: Brain Tumor Detection 2020, Kaggle",
]
ARCH_BUILDERS = {"resnet": "src_models.triage:build_triage_resnet",
                 "vit": "src_models.triage:build_triage_vit"}


def _cache_dir() -> Path:
    base = os.environ.get("RADIOGEN_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or \
        os.path.join(Path.home(), ".cache")
    return Path(base) / "napari-radiogen" / "triage"


def scan_folder(root: os.PathLike) -> List[Tuple[str, str]]:
    """(relative path, class) of every image under ``root/<class>/`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"triage data folder not found: {root}")
    out = []
    for c in CLASSES:
        d = root / c
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                out.append((f.relative_to(root).as_posix(), c))
    found = {c for _, c in out}
    if len(found) < 2:
        raise ConfigError(f"{root}: expected sub-folders named after the classes "
                          f"({', '.join(CLASSES)}) holding images; found {sorted(found) or 'none'}")
    return out


def dedup_records(root: os.PathLike) -> List[PatientRecord]:
    """One record per distinct image (exact duplicates by SHA-256 merged; the first path in
    sorted order is kept). Raises ConfigError if a duplicate carries two different classes."""
    root = Path(root)
    by_hash: Dict[str, List[Tuple[str, str]]] = {}
    for rel, c in scan_folder(root):
        by_hash.setdefault(file_sha256(root / rel), []).append((rel, c))
    recs = []
    for h, items in by_hash.items():
        classes = {c for _, c in items}
        if len(classes) > 1:
            raise ConfigError(f"identical images carry different classes: "
                              f"{', '.join(r for r, _ in items)}")
        rel, c = items[0]
        recs.append(PatientRecord(patient_id=rel, strata=c, group=h[:16],
                                  info={"class": c, "duplicates": [r for r, _ in items[1:]]}))
    recs.sort(key=lambda r: r.patient_id)
    return recs


def load_arrays(root: os.PathLike, ids: Sequence[str], size: int) -> np.ndarray:
    """Normalised (n, 1, size, size) float16 images for ``ids`` (relative paths), cached."""
    root = Path(root)
    key = hashlib.sha1(json.dumps([str(root.resolve()), size, list(ids)]).encode()).hexdigest()[:16]
    cache = _cache_dir() / f"{key}.npy"
    if cache.exists():
        try:
            arr = np.load(cache)
            if arr.shape == (len(ids), 1, size, size):
                return arr
        except Exception:
            pass
    arr = np.zeros((len(ids), 1, size, size), dtype=np.float16)
    step = 256
    for i in range(0, len(ids), step):
        chunk = [read_image(root / r) for r in ids[i:i + step]]
        arr[i:i + len(chunk)] = normalise_slices(chunk, size).astype(np.float16)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, cache)
    except OSError:
        pass
    return arr


class TriageDataset:
    """Normalised slices + integer labels (augmentation is done per batch in
    ``training_step``, see :func:`augment_batch`)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, ids: Sequence[str], augment: bool = False,
                 seed: int = 0):
        self.x, self.y, self.ids = x, np.asarray(y, dtype=np.int64), list(ids)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        import torch
        return torch.from_numpy(self.x[i].astype(np.float32)), int(self.y[i])


def augment_batch(x, rng: np.random.Generator):
    """Light augmentation of a (n, 1, s, s) batch in [0, 1], one affine resampling per batch:
    horizontal flips, +-12 deg rotation, +-10% scale, +-8% shifts, gamma 0.75-1.33 and
    contrast 0.85-1.1."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    ang = np.deg2rad(rng.uniform(-12, 12, n))
    s = rng.uniform(0.9, 1.1, n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    t = rng.uniform(-0.08, 0.08, (n, 2))
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = np.cos(ang) / s * flip
    theta[:, 0, 1] = -np.sin(ang) / s
    theta[:, 1, 0] = np.sin(ang) / s * flip
    theta[:, 1, 1] = np.cos(ang) / s
    theta[:, :, 2] = t
    th = torch.from_numpy(theta).to(x.device)
    grid = F.affine_grid(th, tuple(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = torch.from_numpy(rng.uniform(0.75, 1.33, (n, 1, 1, 1)).astype(np.float32)).to(x.device)
    c = torch.from_numpy(rng.uniform(0.85, 1.1, (n, 1, 1, 1)).astype(np.float32)).to(x.device)
    return (x.clamp(0, 1) ** g * c).clamp(0, 1)


def classification_metrics(y_true: Sequence[int], prob: np.ndarray) -> Dict[str, Any]:
    """Accuracy, macro-F1, per-class recall/precision/F1 and the confusion matrix, with the
    definitions of :func:`napari_radiogen.core.evaluate.metrics.classification_metrics` (so the
    training CV tables and ``radiogen evaluate`` agree): an undefined value is None, not 0 --
    the recall and F1 of a class absent from the truth, the precision of a class never
    predicted (F1 is 0 for a class in the truth never rightly predicted) -- and ``macro_f1``
    averages the per-class F1 over the classes present in the truth."""
    from ...evaluate.metrics import classification_metrics as core_metrics

    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    m = core_metrics(y_true, prob, classes=list(CLASSES))
    cm = np.asarray(m["confusion"])
    tp, in_truth, in_pred = np.diag(cm), cm.sum(1), cm.sum(0)
    recall = [m["recall_per_class"][c] for c in CLASSES]
    precision = [float(tp[i] / in_pred[i]) if in_pred[i] else None for i in range(len(CLASSES))]
    f1 = []
    for r, p in zip(recall, precision):          # as the core's macro F1 is made of
        if r is None:
            f1.append(None)
        elif p is None or r + p == 0:
            f1.append(0.0)
        else:
            f1.append(2 * r * p / (r + p))
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["f1"],
        "recall": dict(zip(CLASSES, recall)),
        "precision": dict(zip(CLASSES, precision)),
        "f1": dict(zip(CLASSES, f1)),
        "support": {c: int(v) for c, v in zip(CLASSES, in_truth)},
        "confusion": cm.tolist(),
        "confusion_axes": "rows = true class, columns = predicted class, order " + ", ".join(CLASSES),
        "n": int(len(y_true)),
    }


def baseline_features(x: np.ndarray) -> np.ndarray:
    """Simple baseline features of normalised slices: 16x16 block means + 32-bin histogram."""
    n, _, s, _ = x.shape
    b = s // 16
    xf = x.astype(np.float32)[:, 0, :16 * b, :16 * b]
    blocks = xf.reshape(n, 16, b, 16, b).mean(axis=(2, 4)).reshape(n, -1)
    hist = np.stack([np.histogram(v[v > 0], bins=32, range=(0, 1))[0] for v in xf]).astype(np.float32)
    hist /= np.maximum(hist.sum(1, keepdims=True), 1)
    return np.concatenate([blocks, hist], axis=1)


def flat_metrics(m: Dict[str, Any]) -> Dict[str, Any]:
    """Scalar view for the engine's CV tables: accuracy, macro_f1, recall_<class>, n, score
    (an undefined value -- the recall of a class absent from the fold -- is NaN, which the CV
    summary leaves out of the mean and ``radiogen evaluate`` reports as not computed); the
    nested entries (confusion matrix, per-class dicts with None) are kept too."""
    def num(v):
        return float("nan") if v is None else float(v)
    out = dict(m)
    for c, v in m["recall"].items():
        out[f"recall_{c}"] = num(v)
    out["macro_f1"] = num(m["macro_f1"])
    out["score"] = out["macro_f1"]
    return out


@register_task("triage-2d")
class Triage2DTask(TrainTask):
    score_name = "macro_f1"
    model_task = "triage"

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__(cfg)
        m = dict(cfg.get("model") or {})
        self.arch = m.pop("arch", "resnet")
        if self.arch not in ARCH_BUILDERS:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCH_BUILDERS)} "
                              f"(got {self.arch!r})")
        self.size = int(m.pop("input_size", 64))
        m.pop("sequences", None)
        self.model_kwargs = m
        if self.arch == "vit":
            self.model_kwargs.setdefault("img_size", self.size)
            if int(self.model_kwargs["img_size"]) != self.size:
                raise ConfigError("model.img_size must equal model.input_size for the ViT")
        self.data = cfg.get("data")
        if not self.data:
            raise ConfigError("the triage-2d config needs `data:` (a folder of class sub-folders)")
        self._records: Optional[List[PatientRecord]] = None
        self._x: Optional[np.ndarray] = None
        self._index: Dict[str, int] = {}

    # -- data ----------------------------------------------------------------------------------
    def patients(self) -> List[PatientRecord]:
        if self._records is None:
            self._records = dedup_records(self.data)
        return self._records

    def use_patients(self, records: List[PatientRecord]) -> None:
        """Load (and cache) only the images a ``--limit`` run uses, not the whole folder."""
        keep = {r.patient_id for r in records}
        if self._x is None:
            self._use = keep

    def _arrays(self):
        if self._x is None:
            recs = self.patients()
            use = getattr(self, "_use", None)
            if use is not None:
                recs = [r for r in recs if r.patient_id in use]
            ids = [r.patient_id for r in recs]
            self._x = load_arrays(self.data, ids, self.size)
            self._y = np.array([CLASSES.index(r.strata) for r in recs], dtype=np.int64)
            self._index = {pid: i for i, pid in enumerate(ids)}
        return self._x, self._y

    def dataset(self, ids: Sequence[str], augment: bool = False) -> TriageDataset:
        x, y = self._arrays()
        idx = np.array([self._index[i] for i in ids], dtype=int)
        return TriageDataset(x[idx], y[idx], ids, augment=augment,
                             seed=int(self.cfg.get("seed", 0)) + len(ids))

    def make_datasets(self, train_ids, val_ids):
        aug = bool((self.cfg.get("train") or {}).get("augment", True))
        return self.dataset(train_ids, augment=aug), self.dataset(val_ids, augment=False)

    def sample_weights(self, train_dataset):
        y = train_dataset.y
        counts = np.bincount(y, minlength=len(CLASSES)).astype(float)
        return (1.0 / np.maximum(counts[y], 1)).tolist()

    # -- model ---------------------------------------------------------------------------------
    def architecture(self) -> Dict[str, Any]:
        kw = {"n_classes": len(CLASSES), "in_channels": 1, **self.model_kwargs}
        return {"builder": ARCH_BUILDERS[self.arch], "kwargs": kw}

    # -- optimisation --------------------------------------------------------------------------
    def _loss(self):
        import torch.nn.functional as F
        spec = (self.cfg.get("train") or {}).get("loss") or {}
        ls = float(spec.get("label_smoothing", 0.0))
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=ls)

    def training_step(self, model, batch, device):
        x, y = batch
        x, y = x.to(device), y.to(device)
        if bool((self.cfg.get("train") or {}).get("augment", True)):
            # drawn from numpy's global generator, which the engine seeds at every epoch: a
            # resumed run augments its epochs as the uninterrupted run did
            x = augment_batch(x, np.random.default_rng(np.random.randint(2 ** 31)))
        logits = model(x)
        loss = self._loss()(logits.float(), y)
        acc = float((logits.argmax(1) == y).float().mean())
        return loss, {"loss": float(loss.detach()), "acc": acc}

    def predict_proba(self, model, dataset, device, batch_size: int = 256) -> np.ndarray:
        import torch
        model.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(dataset), batch_size):
                self.check_cancel()
                xb = torch.from_numpy(dataset.x[i:i + batch_size].astype(np.float32)).to(device)
                out.append(torch.softmax(model(xb).float(), 1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)

    def evaluate(self, model, dataset, device) -> Dict[str, Any]:
        prob = self.predict_proba(model, dataset, device)
        if len(dataset) == 0:
            return {"score": 0.0, "n": 0}
        m = flat_metrics(classification_metrics(dataset.y, prob))
        m["predictions"] = [
            {"patient_id": pid, "target": "tumour_type", "y_true": int(t),
             "y_prob": [float(v) for v in p], "classes": list(CLASSES)}
            for pid, t, p in zip(dataset.ids, dataset.y, prob)]
        return m

    # -- baseline on the same folds ------------------------------------------------------------
    def baseline(self, train_ids: Sequence[str], test_ids: Sequence[str]) -> Dict[str, Any]:
        """Logistic regression on 16x16 block means + intensity histogram of the normalised
        slices, fitted on ``train_ids``, scored on ``test_ids``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        tr, te = self.dataset(train_ids), self.dataset(test_ids)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(baseline_features(tr.x), tr.y)
        got = clf.predict_proba(baseline_features(te.x))
        # one column per class the fold's training slices hold (clf.classes_): placed in the
        # columns of all the classes, so a class absent from training gets probability 0
        prob = np.zeros((len(te.y), len(CLASSES)), np.float64)
        prob[:, np.asarray(clf.classes_, int)] = got
        m = flat_metrics(classification_metrics(te.y, prob))
        m["model"] = "logistic regression (C=0.1) on 16x16 block means + 32-bin histogram"
        return m

    # -- card ----------------------------------------------------------------------------------
    def card_fields(self) -> Dict[str, Any]:
        recs = self.patients()
        n_dup = sum(len(r.info.get("duplicates", [])) for r in recs)
        counts = {c: sum(r.strata == c for r in recs) for c in CLASSES}
        from ...triage import TRIAGE_NOTE
        return {
            "sequences": [],
            "input": "one 2D grey MRI slice (any sequence); axial slices of a 3D case",
            "spacing_mm": None,
            "input_size": [self.size, self.size],
            "normalisation": NORMALISATION_DOC,
            "classes": list(CLASSES),
            "note": TRIAGE_NOTE,
            "datasets": ["brain-tumour-4class (Kaggle Brain Tumor MRI Dataset, train split; "
                         "see citations)"],
            "data_summary": {
                "images_distinct": len(recs), "exact_duplicates_removed": n_dup,
                "class_counts": counts,
                "patients": "not identified in the source; exact duplicate images "
                            "(SHA-256) merged before splitting",
            },
            "citations": CITATIONS,
        }
