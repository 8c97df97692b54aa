"""Two small tasks that exercise the engine end to end.

* ``phantom-demo``: synthetic 2D "patients" (noise, with or without a bright blob); a tiny CNN
  learns blob vs. no blob in seconds. No files needed (``data: phantom``).
* ``lgg-idh-slices``: a real, minimal IDH predictor on the TCGA-LGG HDF5 packs: per patient the
  ``model.slices`` axial slices with the largest FLAIR-abnormality area, the chosen sequences as
  channels, 64x64, a tiny 2D CNN; the patient probability is the mean over its slices. It is a
  smoke-test-sized model for the engine, not the project's IDH model (see ``prediction-*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ...errors import ConfigError
from ..base import PatientRecord, TrainTask, register_task
from ..datasets_util import (ItemDataset, inverse_frequency_weights, patient_mean, predict_items,
                             read_label_table, without_images_note)
from ..losses import make_loss


class _SliceClassifier(TrainTask):
    """Shared logic: items = 2D slices with a patient label; patient score = mean probability."""

    classes: List[str] = ["0", "1"]
    target = "label"
    score_name = "auc"

    def _items(self, ids: Sequence[str]) -> List[tuple]:
        raise NotImplementedError

    def _augment(self):
        if not self.cfg["train"].get("augment", True):
            return None
        from monai.transforms import Compose, RandFlip, RandGaussianNoise
        return Compose([RandFlip(prob=0.5, spatial_axis=1), RandGaussianNoise(prob=0.3, std=0.05)])

    def make_datasets(self, train_ids, val_ids):
        return (ItemDataset(self._items(train_ids), transform=self._augment()),
                ItemDataset(self._items(val_ids)))

    def sample_weights(self, train_dataset):
        return inverse_frequency_weights(train_dataset.labels())

    def _loss(self):
        if not hasattr(self, "_loss_fn"):
            self._loss_fn = make_loss(self.cfg["train"].get("loss"), n_classes=len(self.classes))
        return self._loss_fn

    def training_step(self, model, batch, device):
        x, y, _ = batch
        logits = model(x.to(device))
        loss = self._loss().to(device)(logits.float(), y.to(device).long())
        acc = (logits.argmax(1).cpu() == y).float().mean().item()
        return loss, {"acc": acc}

    def evaluate(self, model, dataset, device) -> Dict[str, Any]:
        import torch
        from ...evaluate.metrics import roc_auc
        probs = predict_items(model, dataset, device, cancel=self.cancel)
        ids = dataset.patient_ids()
        labels = dict(zip(ids, dataset.labels()))
        y_items = torch.as_tensor(dataset.labels()).long()
        loss = float(torch.nn.functional.nll_loss(
            torch.log(torch.as_tensor(probs).clamp_min(1e-7)), y_items).item()) if len(ids) else 0
        pm = patient_mean(ids, probs)
        pids = list(pm)
        y = np.asarray([int(labels[p]) for p in pids])
        p1 = np.asarray([float(pm[p][1]) for p in pids])
        auc = roc_auc(y, p1)
        acc = float(np.mean((p1 >= 0.5) == y)) if len(y) else float("nan")
        # an undefined AUC (one class in the split) is NaN, not -loss: the engine ranks such
        # epochs and folds by the loss separately instead of comparing a loss with an AUC
        return {"score": auc if auc is not None else float("nan"), "auc": auc if auc is not None
                else float("nan"), "accuracy": acc, "loss": loss,
                "predictions": [{"patient_id": p, "target": self.target, "y_true": int(t),
                                 "y_prob": float(q), "classes": list(self.classes)}
                                for p, t, q in zip(pids, y, p1)]}


@register_task("phantom-demo")
class PhantomDemo(_SliceClassifier):
    """``cfg['phantom'] = {n: 24, slices: 4, size: 32, seed: 0}``; label 1 = a bright blob."""

    model_task = "demo-classification"
    classes = ["no blob", "blob"]
    target = "blob"

    def _p(self) -> Dict[str, Any]:
        p = {"n": 24, "slices": 4, "size": 32, "seed": 0}
        p.update(self.cfg.get("phantom") or {})
        return p

    @property
    def items_per_patient(self) -> int:
        return int(self._p()["slices"])

    def patients(self) -> List[PatientRecord]:
        p = self._p()
        if int(p["n"]) < 3:
            raise ConfigError("phantom.n must be >= 3")
        return [PatientRecord(f"phantom-{i:03d}", strata=str(i % 2), info={"label": i % 2})
                for i in range(int(p["n"]))]

    def _items(self, ids):
        p = self._p()
        s = int(p["size"])
        out = []
        yy, xx = np.mgrid[:s, :s]
        for pid in ids:
            i = int(pid.split("-")[1])
            rng = np.random.default_rng(int(p["seed"]) * 7919 + i)
            lab = i % 2
            for _ in range(int(p["slices"])):
                img = rng.normal(0, 1, (s, s)).astype(np.float32)
                if lab:
                    cy, cx = rng.uniform(s * 0.3, s * 0.7, 2)
                    r = rng.uniform(s * 0.12, s * 0.22)
                    img += 2.0 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
                out.append((img[None], lab, pid))
        return out

    def architecture(self):
        m = self.cfg.get("model") or {}
        return {"builder": "src_models.tiny:build_tiny_cnn2d",
                "kwargs": {"in_channels": 1, "n_classes": 2, "width": int(m.get("width", 4)),
                           "depth": int(m.get("depth", 2))}}

    def card_fields(self):
        s = int(self._p()["size"])
        return {"sequences": ["flair"], "input_size": [1, s, s], "spacing_mm": None,
                "normalisation": "none (synthetic N(0,1) noise)", "classes": self.classes,
                "datasets": "synthetic phantoms (napari_radiogen.core.train.tasks.phantom_demo)"}

    def baseline(self, train_ids, test_ids):
        """Mean-intensity threshold fitted on the training patients (a simple floor)."""
        from ...evaluate.metrics import roc_auc
        te = self._items(test_ids)
        by = patient_mean([t[2] for t in te], np.asarray([[float(t[0].max())] for t in te]))
        labels = {t[2]: t[1] for t in te}
        auc = roc_auc([labels[k] for k in by], [float(v[0]) for v in by.values()])
        return {"auc": auc if auc is not None else float("nan")}


LGG_CHANNELS = {"t1": 0, "flair": 1, "t1ce": 2}


def _check_pack(path: Path) -> None:
    """ConfigError naming ``path`` unless it is an HDF5 pack with ``image`` and ``mask``."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "mask") if k not in f]
            shape = f["image"].shape if "image" in f else None
    except OSError as e:
        raise ConfigError(f"{path.name}: not a readable HDF5 pack ({str(e).splitlines()[0]}); "
                          "remove or replace it, or leave its patient out of the labels "
                          "table") from None
    if missing:
        raise ConfigError(f"{path.name}: the pack has no {' or '.join(missing)} dataset; "
                          "remove or replace it")
    if shape is None or len(shape) != 4 or shape[1] < 3:
        raise ConfigError(f"{path.name}: the pack's image has shape {shape}; expected "
                          "(slices, 3, height, width)")


@register_task("lgg-idh-slices")
class LGGIdhSlices(_SliceClassifier):
    """TCGA-LGG packs -> IDH (mutant = 1). Config keys: ``data`` (folder of ``*.h5`` packs),
    ``labels`` (CSV, default ``<data>/clinical.csv``), ``target`` (default ``idh``),
    ``missing_labels`` (error|drop), ``sequences`` (subset of t1, flair, t1ce), ``model.slices``,
    ``model.size``."""

    model_task = "demo-idh"
    classes = ["wildtype", "mutant"]
    target = "idh"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._cache: Dict[str, List[np.ndarray]] = {}

    def _seqs(self) -> List[str]:
        seqs = self.cfg.get("sequences") or ["flair", "t1", "t1ce"]
        bad = [s for s in seqs if s not in LGG_CHANNELS]
        if bad:
            raise ConfigError(f"the TCGA-LGG packs have no {', '.join(bad)} sequence (they have "
                              f"{', '.join(LGG_CHANNELS)})")
        return list(seqs)

    def patients(self) -> List[PatientRecord]:
        data = Path(str(self.cfg.get("data") or ""))
        if not data.is_dir():
            raise ConfigError(f"data folder not found: {data}")
        self._seqs()
        packs = {f.stem: f for f in sorted(data.glob("*.h5"))}
        if not packs:
            raise ConfigError(f"no HDF5 packs (*.h5) in {data}")
        labels = self.cfg.get("labels") or str(data / "clinical.csv")
        target = self.cfg.get("target", "idh")
        # a clinical table lists more patients than have packs: those rows are left out, once
        # said (refused only when no row has a pack)
        dropped: List[str] = []
        df = read_label_table(labels, [target], known_ids=packs,
                              missing=self.cfg.get("missing_labels", "error"),
                              allowed={"idh": ["mutant", "wildtype"]} if target == "idh" else None,
                              unknown="drop", dropped=dropped, folder=data.name)
        if dropped:
            note = without_images_note(Path(labels).name, dropped, data.name, "pack (.h5)")
            if note not in self.notes:
                self.notes.append(note)
        self._packs = packs
        for pid in df.index:               # a broken pack is named before anything is written
            _check_pack(packs[pid])
        pos = self.cfg.get("positive", "mutant")
        return [PatientRecord(pid, strata=str(v), info={"label": int(str(v) == pos)})
                for pid, v in zip(df.index, df[target])]

    @property
    def items_per_patient(self) -> int:
        return int((self.cfg.get("model") or {}).get("slices", 3))

    def _load(self, pid: str) -> List[np.ndarray]:
        if pid in self._cache:
            return self._cache[pid]
        import h5py
        m = self.cfg.get("model") or {}
        k, size = int(m.get("slices", 3)), int(m.get("size", 64))
        with h5py.File(self._packs[pid], "r") as f:
            mask = f["mask"][:]
            area = mask.reshape(len(mask), -1).sum(1)
            idx = np.sort(np.argsort(-area, kind="stable")[:k])
            img = f["image"][idx].astype(np.float32)          # (k, 3, 128, 128)
        ch = [LGG_CHANNELS[s] for s in self._seqs()]
        img = img[:, ch]
        f_ = 128 // size
        if f_ > 1:
            img = img.reshape(img.shape[0], img.shape[1], size, f_, size, f_).mean((3, 5))
        scale = np.percentile(img, 99, axis=(0, 2, 3), keepdims=True) + 1e-3
        img = img / scale
        self._cache[pid] = list(img)
        return self._cache[pid]

    def _items(self, ids):
        if not hasattr(self, "_packs"):
            self.patients()
        lab = {}
        pos = self.cfg.get("positive", "mutant")
        import pandas as pd
        labels = self.cfg.get("labels") or str(Path(self.cfg["data"]) / "clinical.csv")
        df = pd.read_csv(labels, dtype={"patient_id": str}).set_index("patient_id")
        target = self.cfg.get("target", "idh")
        for pid in ids:
            lab[pid] = int(str(df.loc[pid, target]) == pos)
        return [(x, lab[pid], pid) for pid in ids for x in self._load(pid)]

    def baseline(self, train_ids, test_ids):
        """Logistic regression on age + sex (BASELINES.md "age + sex only"), same folds."""
        import pandas as pd
        from sklearn.linear_model import LogisticRegression
        from ...evaluate.metrics import roc_auc
        clin = Path(str(self.cfg["data"])) / "clinical.csv"
        if not clin.exists():
            return None
        df = pd.read_csv(clin, dtype={"patient_id": str}).set_index("patient_id")
        pos = self.cfg.get("positive", "mutant")
        target = self.cfg.get("target", "idh")

        def xy(ids):
            d = df.loc[[i for i in ids if i in df.index]]
            x = np.stack([pd.to_numeric(d["age_at_initial_pathologic"], errors="coerce"),
                          pd.to_numeric(d["gender"], errors="coerce")], 1).astype(float)
            return x, (d[target].astype(str) == pos).astype(int).to_numpy()
        xtr, ytr = xy(train_ids)
        xte, yte = xy(test_ids)
        med = np.nanmedian(xtr, 0)
        xtr = np.where(np.isnan(xtr), med, xtr)
        xte = np.where(np.isnan(xte), med, xte)
        if len(set(ytr)) < 2:
            return None
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
        clf = LogisticRegression().fit((xtr - mu) / sd, ytr)
        auc = roc_auc(yte, clf.predict_proba((xte - mu) / sd)[:, 1])
        return {"auc": auc if auc is not None else float("nan")}

    def architecture(self):
        m = self.cfg.get("model") or {}
        return {"builder": "src_models.tiny:build_tiny_cnn2d",
                "kwargs": {"in_channels": len(self._seqs()), "n_classes": 2,
                           "width": int(m.get("width", 8)), "depth": int(m.get("depth", 3))}}

    def card_fields(self):
        m = self.cfg.get("model") or {}
        size = int(m.get("size", 64))
        return {"sequences": self._seqs(), "input_size": [len(self._seqs()), size, size],
                "spacing_mm": [3.75, 3.75], "classes": self.classes,
                "normalisation": "per patient and channel: divide by the 99th percentile",
                "datasets": "TCGA-LGG (Buda et al. 2019; labels Ceccarelli et al. 2016)",
                "citations": ["Buda, Saha, Mazurowski, Comput Biol Med 2019",
                              "Ceccarelli et al., Cell 2016"]}
