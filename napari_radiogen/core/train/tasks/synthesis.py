"""TrainTask ``synthesis``: one target-conditioned 2D generator for every sequence (Seq2Seq-style).

Data (``data:`` one folder or a list of folders; each is recognised by its contents):

* BraTS-style case folders (``<id>/<id>_{t1,t1ce,t2,flair}.nii.gz``): all four sequences;
* TCGA-LGG slice packs (``*.h5`` with ``image`` (n, 3, 128, 128) channels t1/flair/t1ce and the
  ``available`` attribute): t2 and unavailable channels are **missing** (never inputs, never
  targets).

Preprocessing (cached as ``.npz`` under ``cache_dir``; identical to inference in
``core.synthesize``): brain mask, each volume scaled to [0, 1] by its 99.5th brain percentile,
brain slices only, in-plane resampling to 2 mm (BraTS 240 -> 120 px), zero-padded to 128 x 128.
TCGA-LGG packs (about 1.9 mm) are used at their size.

Training samples: a random brain slice (BraTS with probability ``brats_fraction``), a random
available target, as sources all the other available sequences (probability ``p_all_sources``)
or a random non-empty subset of them; a random ``crop`` x ``crop`` window and a left-right flip.
Loss: L1 over the brain pixels + ``loss_window`` x L1 over the whole window.

Model ``linear: table`` (the residual-over-regression net, see ``src_models.seq2seq``): before
training, the least-squares regression of every target from every source subset is fitted on the
fold's training patients (:func:`fit_linear_table`, the same fit as the linear baseline) and
written into the net, which then starts as that baseline and learns the residual.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ...case import SEQUENCES
from ...errors import ConfigError
from ..base import PatientRecord, TrainTask, register_task
from . import _citations as _cite

PAD = 128

# the shared datasets of the shipped configs (the engine adds how many patients a run used,
# and describes a user's own folders as user data instead)
DATASET_BRATS = ("RSNA-ASNR-MICCAI BraTS 2021 training data (all four sequences; "
                 "BraTS terms: research use, cite)")
DATASET_LGG = ("TCGA-LGG (Buda et al. 2019 slice packs of TCIA TCGA-LGG images; t2 and "
               "unavailable channels treated as missing, never inputs or targets)")
CITE_SEQ2SEQ = ("Han L., Tan T., Zhang T. et al. Synthesis-based imaging-differentiation "
                "representation learning for multi-sequence 3D/4D MRI. Med Image Anal 92:103044 "
                "(2024) (Seq2Seq)")
CITE_BRATS = list(_cite.BRATS)
CASE_PDGM, CITE_PDGM = _cite.CASE_PDGM, _cite.PDGM
CITE_LGG = [_cite.BUDA, _cite.TCIA_LGG]
MIN_BRAIN_FRACTION = 0.02
LGG_CHANNELS = {"t1": 0, "flair": 1, "t1ce": 2}


# ------------------------------------------------------------------------------------------------
# preprocessing
# ------------------------------------------------------------------------------------------------
def _pad_center(a: np.ndarray, size: int = PAD) -> np.ndarray:
    h, w = a.shape[-2:]
    if h > size or w > size:                       # centre crop
        y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
        a = a[..., y0:y0 + min(h, size), x0:x0 + min(w, size)]
        h, w = a.shape[-2:]
    py, px = size - h, size - w
    pad = [(0, 0)] * (a.ndim - 2) + [(py // 2, py - py // 2), (px // 2, px - px // 2)]
    return np.pad(a, pad)


def _finish(stack: np.ndarray, mask: np.ndarray, avail: np.ndarray) -> Dict[str, np.ndarray]:
    """stack (4, z, y, x) normalised, mask (z, y, x) -> brain slices, padded, float16."""
    keep = mask.reshape(mask.shape[0], -1).mean(1) >= MIN_BRAIN_FRACTION
    stack, mask = stack[:, keep], mask[keep]
    return {"x": _pad_center(np.moveaxis(stack, 0, 1)).astype(np.float16),
            "mask": _pad_center(mask).astype(bool), "avail": avail.astype(np.float32)}


def preprocess_brats(folder: Path) -> Dict[str, np.ndarray]:
    import SimpleITK as sitk
    from ...case import Geometry, canonicalize
    from ...synthesize import brain_mask, model_grid_shape, normalise, to_model_grid

    cid = folder.name
    raw, geom = {}, None
    for s in SEQUENCES:
        f = folder / f"{cid}_{s}.nii.gz"
        img, _ = canonicalize(sitk.ReadImage(str(f)))
        raw[s] = sitk.GetArrayFromImage(img).astype(np.float32)
        geom = Geometry.from_image(img)
    mask = brain_mask(list(raw.values()))
    stack = np.stack([normalise(raw[s], mask)[0] for s in SEQUENCES])
    size = model_grid_shape(geom)
    low = to_model_grid(np.concatenate([stack, mask[None].astype(np.float32)]), size)
    low = np.moveaxis(low, 1, 0)                              # (5, z, y', x')
    return _finish(low[:4], low[4] >= 0.5, np.ones(4, np.float32))


def preprocess_lgg(path: Path) -> Dict[str, np.ndarray]:
    import h5py
    from ...synthesize import brain_mask, normalise

    with h5py.File(path, "r") as f:
        img = f["image"][:].astype(np.float32)              # (n, 3, 128, 128)
        av = np.asarray(f.attrs.get("available", [True, True, True]), bool)
    present = [s for s, c in LGG_CHANNELS.items() if av[c]]
    mask = brain_mask([img[:, LGG_CHANNELS[s]] for s in present])
    stack = np.zeros((4,) + img[:, 0].shape, np.float32)
    avail = np.zeros(4, np.float32)
    for s in present:
        stack[SEQUENCES.index(s)] = normalise(img[:, LGG_CHANNELS[s]], mask)[0]
        avail[SEQUENCES.index(s)] = 1
    return _finish(stack, mask, avail)


def _cache_dir(cfg: Dict[str, Any]) -> Path:
    d = cfg.get("cache_dir") or os.path.join(
        os.environ.get("RADIOGEN_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
        or os.path.join(Path.home(), ".cache"), "napari-radiogen", "synthesis")
    return Path(d)


def discover(paths: Sequence[str]) -> List[Tuple[str, str, Path]]:
    """[(patient_id, kind 'brats'|'lgg', path)] from data folders."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"data folder not found: {p}")
        if p.is_file() and p.suffix in (".h5", ".hdf5"):
            out.append((p.stem, "lgg", p))
            continue
        if (p / f"{p.name}_t1.nii.gz").exists():
            out.append((p.name, "brats", p))
            continue
        for q in sorted(p.iterdir()):
            if q.is_dir() and all((q / f"{q.name}_{s}.nii.gz").exists() for s in SEQUENCES):
                out.append((q.name, "brats", q))
            elif q.suffix in (".h5", ".hdf5"):
                out.append((q.stem, "lgg", q))
    if not out:
        raise ConfigError(f"no BraTS case folders or TCGA-LGG .h5 packs found in "
                          f"{', '.join(map(str, paths))}")
    return out


def load_patient(pid: str, kind: str, path: Path, cache: Path) -> Dict[str, np.ndarray]:
    # named by a hash only: no patient id (nor path) in the cache folder's file names
    key = hashlib.sha1(f"v1|{kind}|{pid}|{path.resolve()}".encode()).hexdigest()[:20]
    f = cache / f"{key}.npz"
    if f.exists():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    d = preprocess_brats(path) if kind == "brats" else preprocess_lgg(path)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{f.name}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **d)
    os.replace(tmp, f)
    return d


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------
class SynthTrainSet:
    """Random (slice, target, source subset, crop) samples; ``len`` = samples per epoch."""

    def __init__(self, patients: Dict[str, Dict[str, Any]], *, samples: int = 2048,
                 crop: int = 96, brats_fraction: float = 0.5, p_all_sources: float = 0.5,
                 augment: bool = True, seed: int = 0):
        # a patient with fewer than 2 available sequences has no source-target pair
        self.p = {k: d for k, d in patients.items() if float(np.sum(d["avail"])) >= 2}
        self.ids = {k: [i for i, d in self.p.items() if d["kind"] == k] for k in ("brats", "lgg")}
        if not self.p:
            raise ConfigError("no training patients for the synthesis task")
        self.samples, self.crop = int(samples), int(crop)
        self.brats_fraction = brats_fraction if self.ids["brats"] and self.ids["lgg"] else (
            1.0 if self.ids["brats"] else 0.0)
        self.p_all = p_all_sources
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine each epoch: a sample is drawn from (seed, epoch, index) alone,
        so a resumed run, the ranks of a distributed run and DataLoader workers draw what an
        uninterrupted single process draws (a generator kept by the set restarted with each
        process and was the same on every rank)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> Dict[str, Any]:
        import torch
        r = np.random.default_rng([self.seed, self.epoch, int(i)])
        kind = "brats" if r.random() < self.brats_fraction else "lgg"
        d = self.p[self.ids[kind][r.integers(len(self.ids[kind]))]]
        z = r.integers(d["x"].shape[0])
        x = d["x"][z].astype(np.float32)
        m = d["mask"][z]
        avail = d["avail"].copy()
        present = np.nonzero(avail)[0]
        t = int(r.choice(present))
        others = [int(c) for c in present if c != t]
        src = np.zeros(4, np.float32)
        if r.random() < self.p_all or len(others) == 1:
            src[others] = 1
        else:
            k = r.integers(1, len(others))                     # strict, non-empty subset
            src[r.choice(others, size=k, replace=False)] = 1
        c = self.crop
        if c < x.shape[-1]:
            y0, x0 = r.integers(0, x.shape[-2] - c + 1), r.integers(0, x.shape[-1] - c + 1)
            x, m = x[:, y0:y0 + c, x0:x0 + c], m[y0:y0 + c, x0:x0 + c]
        if self.augment and r.random() < 0.5:
            x, m = x[..., ::-1], m[..., ::-1]
        x = np.ascontiguousarray(x)
        y = x[t:t + 1].copy()
        return {"x": torch.from_numpy(x * src[:, None, None]), "avail": torch.from_numpy(src),
                "target": torch.tensor(t), "y": torch.from_numpy(y),
                "mask": torch.from_numpy(np.ascontiguousarray(m)[None].astype(np.float32))}


class SynthEvalSet:
    """Whole patients for evaluation at the model grid: for each available target, all the
    other available sequences as sources."""

    def __init__(self, patients: Dict[str, Dict[str, Any]], slice_step: int = 1):
        self.p = patients
        self.ids = list(patients)
        self.slice_step = max(1, int(slice_step))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tuple[str, Dict[str, Any]]:
        pid = self.ids[i]
        return pid, self.p[pid]


def summarise_scores(preds: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean PSNR / brain SSIM over ``preds`` (non-empty), overall and per target; score = PSNR."""
    res: Dict[str, Any] = {"psnr_db": float(np.mean([p["psnr_db"] for p in preds])),
                           "ssim_brain": float(np.mean([p["ssim_brain"] for p in preds]))}
    for t in SEQUENCES:
        v = [p for p in preds if p["target"] == t]
        if v:
            res[f"psnr_{t}"] = float(np.mean([p["psnr_db"] for p in v]))
            res[f"ssim_{t}"] = float(np.mean([p["ssim_brain"] for p in v]))
    res["score"] = res["psnr_db"]
    return res


def evaluate_patients(model, dataset: SynthEvalSet, device="cpu", batch: int = 32,
                      cancel=None) -> Dict[str, Any]:
    """PSNR / SSIM of every available target of every patient; ``cancel`` (a
    ``CancelToken``) is checked before each batch."""
    import torch
    from ...progress import check
    from ...synthesize import psnr, ssim_brain

    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(len(dataset)):
            pid, d = dataset[i]
            x = torch.from_numpy(d["x"][::dataset.slice_step].astype(np.float32))
            m = d["mask"][::dataset.slice_step]
            avail = d["avail"]
            for t in np.nonzero(avail)[0]:
                src = avail.copy()
                src[t] = 0
                if src.sum() == 0:
                    continue
                out = []
                for j in range(0, len(x), batch):
                    check(cancel)
                    xb = x[j:j + batch].to(device)
                    out.append(model(xb, torch.from_numpy(src)[None].expand(len(xb), -1).to(device),
                                     torch.tensor([int(t)]).expand(len(xb)).to(device)
                                     )[:, 0].float().clamp(0, 1).cpu().numpy())
                pred = np.concatenate(out) * m
                real = x[:, t].numpy()
                preds.append({"patient_id": pid, "kind": d["kind"], "target": SEQUENCES[int(t)],
                              "psnr_db": psnr(pred, real, m), "ssim_brain": ssim_brain(pred, real, m)})
    model.train()
    if not preds:
        return {"score": float("nan"), "predictions": []}
    return dict(summarise_scores(preds), predictions=preds)


def fit_linear(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], max_pixels: int = 400_000,
               seed: int = 0) -> np.ndarray:
    """Least squares ``y ~ X @ w + b`` over pixel rows; returns (k + 1,) weights."""
    rng = np.random.default_rng(seed)
    per = max(1, max_pixels // max(1, len(xs)))          # subsample each patient alike
    px, py = [], []
    for x, y in zip(xs, ys):
        if len(y) > per:
            idx = rng.choice(len(y), per, replace=False)
            x, y = x[idx], y[idx]
        px.append(np.asarray(x, np.float64))
        py.append(np.asarray(y, np.float64))
    X, y = np.concatenate(px), np.concatenate(py)
    X = np.concatenate([X, np.ones((len(X), 1))], 1)
    return np.linalg.lstsq(X, y, rcond=None)[0]


def apply_linear(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x: (k, ...) -> clip(sum_k w_k x_k + b, 0, 1)."""
    out = np.tensordot(w[:-1], x.astype(np.float64), axes=(0, 0)) + w[-1]
    return np.clip(out, 0, 1)


def linear_baseline(train: Dict[str, Dict[str, Any]], test: Dict[str, Dict[str, Any]],
                    slice_step: int = 4, fit_step: int = 4) -> Dict[str, Any]:
    """Fitted on every ``fit_step``-th brain slice of the training patients (subsampled
    pixels), scored on every ``slice_step``-th slice of the test patients."""
    from ...synthesize import psnr, ssim_brain

    preds = []
    fits: Dict[Tuple[int, Tuple[int, ...]], np.ndarray] = {}
    for pid, d in test.items():
        avail = np.nonzero(d["avail"])[0]
        for t in avail:
            src = tuple(int(c) for c in avail if c != t)
            if not src:
                continue
            key = (int(t), src)
            if key not in fits:
                xs, ys = [], []
                for q in train.values():
                    if all(q["avail"][c] for c in src + (int(t),)):
                        m = q["mask"][::fit_step]
                        qx = q["x"][::fit_step]
                        xs.append(np.stack([qx[:, c][m] for c in src], 1))
                        ys.append(qx[:, int(t)][m])
                if not xs:
                    continue
                fits[key] = fit_linear(xs, ys)
            x = d["x"][::slice_step].astype(np.float32)
            m = d["mask"][::slice_step]
            pred = apply_linear(fits[key], np.moveaxis(x[:, list(src)], 1, 0)) * m
            real = x[:, int(t)]
            preds.append({"target": SEQUENCES[int(t)], "psnr_db": psnr(pred, real, m),
                          "ssim_brain": ssim_brain(pred, real, m)})
    return summarise_scores(preds) if preds else {}


def fit_linear_table(train: Dict[str, Dict[str, Any]], fit_step: int = 2
                     ) -> Dict[Tuple[int, Tuple[int, ...]], np.ndarray]:
    """Least-squares regression of every target from every non-empty subset of the other
    sequences, over the brain pixels of every ``fit_step``-th brain slice of the training
    patients that have them all (each patient subsampled alike, as :func:`linear_baseline`):
    ``{(target, sources): (len(sources) + 1,) weights}``."""
    from itertools import combinations
    fits: Dict[Tuple[int, Tuple[int, ...]], np.ndarray] = {}
    n = len(SEQUENCES)
    for t in range(n):
        others = [c for c in range(n) if c != t]
        for k in range(1, n):
            for src in combinations(others, k):
                xs, ys = [], []
                for q in train.values():
                    if all(q["avail"][c] for c in src + (t,)):
                        m = q["mask"][::fit_step]
                        qx = q["x"][::fit_step]
                        xs.append(np.stack([qx[:, c][m] for c in src], 1))
                        ys.append(qx[:, t][m])
                if xs:
                    fits[(t, tuple(src))] = fit_linear(xs, ys)
    return fits


# ------------------------------------------------------------------------------------------------
# the task
# ------------------------------------------------------------------------------------------------
@register_task("synthesis")
class SynthesisTask(TrainTask):
    score_name = "psnr_db"
    model_task = "synthesis"
    method_citations = (CITE_SEQ2SEQ,)

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__(cfg)
        data = cfg.get("data")
        if not data:
            raise ConfigError("the synthesis config needs `data:` (BraTS folders and/or "
                              "TCGA-LGG .h5 packs)")
        self.paths = [data] if isinstance(data, str) else list(data)
        base = Path(cfg["_source"]).parent if cfg.get("_source") else None
        if base is not None:
            from ..config import resolve_path
            self.paths = [resolve_path(p, base) for p in self.paths]
        self.mcfg = dict(cfg.get("model") or {})
        self.scfg = dict(cfg.get("synthesis") or {})
        self._found = None
        self._cache: Dict[str, Dict[str, Any]] = {}
        self._lin_fits: Dict[Tuple[int, Tuple[int, ...]], np.ndarray] = {}

    # data -------------------------------------------------------------------------------------
    def _discover(self):
        if self._found is None:
            found = discover(self.paths)
            lim = self.scfg.get("max_lgg")
            if lim is not None:
                lgg = [f for f in found if f[1] == "lgg"][: int(lim)]
                found = [f for f in found if f[1] != "lgg"] + lgg
            self._found = {pid: (kind, path) for pid, kind, path in found}
        return self._found

    def patients(self) -> List[PatientRecord]:
        return [PatientRecord(patient_id=pid, strata=kind, info={"kind": kind, "path": str(p)})
                for pid, (kind, p) in self._discover().items()]

    def load(self, ids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        found = self._discover()
        out = {}
        for pid in ids:
            if pid not in self._cache:
                kind, path = found[pid]
                d = load_patient(pid, kind, Path(path), _cache_dir(self.cfg))
                d["kind"] = kind
                self._cache[pid] = d
            out[pid] = self._cache[pid]
        return out

    def make_datasets(self, train_ids, val_ids):
        t = self.cfg.get("train") or {}
        if not train_ids:                       # the engine's test-only call
            return [], SynthEvalSet(self.load(val_ids),
                                    slice_step=self.scfg.get("eval_slice_step", 4))
        if self.mcfg.get("linear", "mlp") == "table":
            self._lin_fits = fit_linear_table(self.load(train_ids))
        train = SynthTrainSet(self.load(train_ids), samples=self.scfg.get("samples_per_epoch", 2048),
                              crop=self.scfg.get("crop", 96),
                              brats_fraction=self.scfg.get("brats_fraction", 0.5),
                              p_all_sources=self.scfg.get("p_all_sources", 0.5),
                              augment=bool(t.get("augment", True)),
                              seed=int(self.cfg.get("seed", 0)))
        val = SynthEvalSet(self.load(val_ids), slice_step=self.scfg.get("eval_slice_step", 4))
        return train, val

    # model ------------------------------------------------------------------------------------
    def architecture(self) -> Dict[str, Any]:
        kw = {"base": int(self.mcfg.get("base", 16)), "depth": int(self.mcfg.get("depth", 3)),
              "n_seq": 4, "cond_hidden": int(self.mcfg.get("cond_hidden", 64))}
        if self.mcfg.get("linear", "mlp") != "mlp":
            kw["linear"] = str(self.mcfg["linear"])
            kw["lin_scale"] = float(self.mcfg.get("lin_scale", 0.05))
        return {"builder": "src_models.seq2seq:seq2seq_unet2d", "kwargs": kw}

    def build_model(self):
        """The net; a ``linear: table`` net starts from the least-squares regression of every
        (target, source subset) fitted on the training patients of the last
        :meth:`make_datasets` call (the engine calls it just before building the model)."""
        model = super().build_model()
        if getattr(model, "linear_kind", "mlp") == "table" and self._lin_fits:
            for (t, src), w in self._lin_fits.items():
                model.set_linear_init(t, src, w)
        return model

    def training_step(self, model, batch, device):
        x = batch["x"].to(device)
        y = batch["y"].to(device)
        m = batch["mask"].to(device)
        pred = model(x, batch["avail"].to(device), batch["target"].to(device))
        err = (pred - y).abs()
        l_all = err.mean()
        l_brain = (err * m).sum() / m.sum().clamp_min(1.0)
        # synthesis.loss_window: weight of the L1 over the whole window (1.0 = the first
        # shipped model's loss; the metrics only look at brain pixels)
        loss = float(self.scfg.get("loss_window", 1.0)) * l_all + l_brain
        return loss, {"l1": float(l_all.detach()), "l1_brain": float(l_brain.detach())}

    def evaluate(self, model, dataset, device):
        return evaluate_patients(model, dataset, device, cancel=self.cancel)

    def baseline(self, train_ids, test_ids) -> Dict[str, Any]:
        """Per-pixel linear regression of each target from all the other available sequences
        (with intercept), fitted on the training patients' brain pixels; same metric."""
        return linear_baseline(self.load(train_ids), self.load(test_ids),
                               slice_step=self.scfg.get("eval_slice_step", 4))

    def card_fields(self) -> Dict[str, Any]:
        from ...synthesize import PROTOCOL, SYNTH_SPACING_MM
        return {"sequences": list(SEQUENCES), "targets": list(SEQUENCES),
                "spacing_mm": [SYNTH_SPACING_MM, SYNTH_SPACING_MM, None],
                "input_size": "2D axial slices, any size (padded to a multiple of 8); trained on "
                              f"{self.scfg.get('crop', 96)} px crops of 128 x 128 slices",
                "normalisation": "per volume: clip(x / p99.5 inside the brain mask, 0, 1)",
                "protocol": PROTOCOL, **self._data_fields()}

    def _data_fields(self) -> Dict[str, Any]:
        """``datasets`` and ``citations`` of the kinds of data found (BraTS case folders,
        TCGA-LGG packs). The engine keeps them only when the run's folders are the shared
        BraTS 2021 / TCGA-LGG folders of the shipped configs; a user's own folders are
        described as user data, with the method's citation only (``method_citations``)."""
        try:
            found = self._discover()
        except ConfigError:
            found = {}
        kinds = {k for k, _ in found.values()} or {"brats", "lgg"}
        datasets, cites = [], [CITE_SEQ2SEQ]
        if "brats" in kinds:
            datasets.append(DATASET_BRATS)
            cites += CITE_BRATS
            if CASE_PDGM in found:
                cites.append(CITE_PDGM)
        if "lgg" in kinds:
            datasets.append(DATASET_LGG)
            cites += CITE_LGG
        return {"datasets": datasets, "citations": cites}
