"""Segmentation training tasks.

``segmentation-brats``: 3D sub-region model on 4-sequence BraTS cases. Each case is prepared
exactly as at inference (``core.segment.prepare_volume``: brain crop, ``model.spacing_mm``,
z-score); targets are the nested regions WT/TC/ET on that grid (3 sigmoid channels). Training
draws random patches (tumour-centred with probability ``model.pos_fraction``), random flips and
intensity scale/shift. Evaluation runs the full inference path (network on the whole cropped
volume, back to the native 1 mm grid) and scores Dice per region against the expert labels on
the native grid; ``score`` = mean of WT/TC/ET Dice.

``segmentation-lgg``: 2D whole-tumour (FLAIR abnormality) model on the TCGA-LGG slice packs:
channels FLAIR, T1, T1ce z-scored per patient + 3 availability channels (missing -> zeros and
availability 0; channels the source filled with a FLAIR copy count as missing). Training draws
slices (tumour slices with probability ``model.pos_fraction``), random crops, flips, intensity
jitter and random drop of T1/T1ce (so the model also works FLAIR-only). Evaluation: Dice per
patient over the whole slice stack; ``score`` = mean per-patient Dice.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ConfigError
from ..base import PatientRecord, TrainTask, register_task
from . import _citations as _cite

ARCH_3D = {"segresnet": "src_models.segmentation:segresnet_3d",
           "attention_unet": "src_models.segmentation:attention_unet_3d"}
ARCH_2D = {"segresnet": "src_models.segmentation:segresnet_2d",
           "attention_unet": "src_models.segmentation:attention_unet_2d"}

CITE_BRATS = [*_cite.BRATS, _cite.PDGM, _cite.SEGRESNET, _cite.ATTENTION_UNET, _cite.MONAI]
CITE_LGG = [_cite.BUDA, _cite.MAZUROWSKI, _cite.TCIA_LGG, _cite.SEGRESNET, _cite.ATTENTION_UNET]


# the default datasets (the engine adds how many patients a run used, and describes a user's
# own data folder instead when the run did not use these)
DATASET_BRATS = ("RSNA-ASNR-MICCAI BraTS 2021 training data, cases with expert labels "
                 "(BraTS terms: research use, cite)")
DATASET_LGG = ("LGG FLAIR-abnormality segmentation dataset (Buda et al. 2019; TCIA TCGA-LGG "
               "images) as 2D packs")


def _torch():
    import torch
    return torch


def _rng_for(seed: int, epoch: int, k: int) -> np.random.Generator:
    """The generator of sample ``k`` of ``epoch``: a sample depends on these alone, not on
    which process draws it or how many it drew before (a resumed run, the ranks of a
    distributed run and DataLoader workers draw what a single uninterrupted run draws)."""
    return np.random.default_rng([int(seed), int(epoch), int(k)])


class _EpochSamples:
    """A training set of ``n`` random samples per epoch; the engine calls :meth:`set_epoch`
    (as it does for its sampler) so that each epoch draws other samples."""
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def _loss_fn(spec: Optional[Dict[str, Any]]):
    """Dice + BCE on sigmoid channels (soft targets allowed).

    ``batch: true`` computes each channel's Dice over the whole batch (MONAI ``DiceLoss(batch=
    True)``) instead of per patch: with per-patch Dice (and its +1 smoothing) a patch without
    enhancing tumour rewards an empty ET channel as much as a patch with ET rewards finding it,
    so a rare small region can learn to stay empty."""
    torch = _torch()
    import torch.nn.functional as F

    spec = dict(spec or {})
    w_dice = float(spec.get("dice_weight", 1.0))
    w_bce = float(spec.get("bce_weight", 1.0))
    if spec.get("batch"):
        from monai.losses import DiceLoss
        dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)

        def batch_loss(logits, target):
            d = dice(logits.float(), target)
            bce = F.binary_cross_entropy_with_logits(logits.float(), target)
            return w_dice * d + w_bce * bce, {"dice_loss": float(d.detach()),
                                              "bce": float(bce.detach())}
        return batch_loss

    def loss(logits, target):
        p = torch.sigmoid(logits.float())
        dims = tuple(range(2, p.ndim))
        inter = (p * target).sum(dims)
        den = p.sum(dims) + target.sum(dims)
        d = 1.0 - (2 * inter + 1.0) / (den + 1.0)          # per sample and channel
        bce = F.binary_cross_entropy_with_logits(logits.float(), target)
        return w_dice * d.mean() + w_bce * bce, {"dice_loss": float(d.mean().detach()), "bce": float(bce.detach())}
    return loss


# ==========================================================================================
# 3D BraTS
# ==========================================================================================

_PREP_CACHE: Dict[Tuple[str, float], Dict[str, Any]] = {}


def prepare_brats_case(folder: str, card_like: Dict[str, Any]) -> Dict[str, Any]:
    """Load + prepare one BraTS case folder as inference does; targets on the prepared grid.

    Returns ``{"x": (4,z,y,x) float32, "y": (3,z,y,x) float32 soft regions, "prepared": ...,
    "truth": native labels (z,y,x) uint8, "id": case id}`` (cached per process)."""
    from ...io import load_case
    from ...segment import labels_to_regions, prepare_volume
    from ...case import Volume
    from ...prepare import resample_volume

    key = (str(folder), float(card_like.get("spacing_mm") or 2.0))
    if key in _PREP_CACHE:
        return _PREP_CACHE[key]
    case = load_case(folder)
    if case.labels is None:
        raise ConfigError(f"{folder}: no segmentation (seg) file; training needs expert labels")
    prepared = prepare_volume(case, card_like)
    truth = np.asarray(case.labels.array).astype(np.uint8)
    regions = labels_to_regions(truth).astype(np.float32)
    # linear resampling of each region mask onto the cropped model grid: at 2 mm from a 1 mm
    # grid this is the 2x2x2 block mean, i.e. the fraction of each voxel inside the region
    y = np.stack([np.asarray(resample_volume(Volume(r, case.labels.geometry), prepared.geometry,
                                             interpolator="linear").array, dtype=np.float32)
                  for r in regions])
    item = {"x": np.asarray(prepared.array, dtype=np.float32), "y": np.clip(y, 0, 1),
            "prepared": prepared, "truth": truth, "id": case.case_id, "folder": str(folder)}
    _PREP_CACHE[key] = item
    return item


class _BratsTrain(_EpochSamples):
    def __init__(self, items: List[Dict[str, Any]], n: int, patch: Sequence[int],
                 pos_fraction: float, augment: bool, seed: int, et_fraction: float = 0.0):
        self.items, self.n, self.patch = items, int(n), tuple(int(p) for p in patch)
        self.pos, self.augment, self.seed = float(pos_fraction), bool(augment), int(seed)
        self.et = float(et_fraction)     # share of patches centred on an enhancing voxel

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        torch = _torch()
        rng = _rng_for(self.seed, self.epoch, i)
        it = self.items[int(rng.integers(len(self.items)))]
        x, y = it["x"], it["y"]
        shp = np.array(x.shape[1:])
        ps = np.array(self.patch)
        # centre: an enhancing voxel (when the case has one), a tumour voxel, or random
        u = rng.random()
        if u < self.et and (y[2] > 0.5).any():
            pts = np.argwhere(y[2] > 0.5)
            c = pts[int(rng.integers(len(pts)))]
        elif u < self.et + self.pos and (y[0] > 0.5).any():
            pts = np.argwhere(y[0] > 0.5)
            c = pts[int(rng.integers(len(pts)))]
        else:
            c = np.array([rng.integers(s) for s in shp])
        lo = np.clip(c - ps // 2, 0, np.maximum(shp - ps, 0))
        sl = tuple(slice(int(l), int(l + p)) for l, p in zip(lo, ps))
        xs = x[(slice(None),) + sl]
        ys = y[(slice(None),) + sl]
        pad = [(0, 0)] + [(0, int(max(p - s, 0))) for p, s in zip(ps, xs.shape[1:])]
        if any(p[1] for p in pad):
            xs = np.pad(xs, pad)
            ys = np.pad(ys, pad)
        if self.augment:
            for ax in (1, 2, 3):
                if rng.random() < 0.5:
                    xs = np.flip(xs, ax)
                    ys = np.flip(ys, ax)
            scale = rng.uniform(0.9, 1.1, size=(xs.shape[0], 1, 1, 1)).astype(np.float32)
            shift = rng.uniform(-0.1, 0.1, size=(xs.shape[0], 1, 1, 1)).astype(np.float32)
            fg = xs != 0
            xs = np.where(fg, xs * scale + shift, 0.0).astype(np.float32)
        return (torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(ys, dtype=np.float32)))


class _BratsEval:
    def __init__(self, items: List[Dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class _SegmentationTask(TrainTask):
    """What the BraTS (3D, regions) and LGG (2D, FLAIR abnormality) tasks share: the model
    section, the MONAI architecture choice and a loss step."""
    score_name = "dice"
    model_task = "segmentation"
    method_citations = (_cite.SEGRESNET, _cite.ATTENTION_UNET, _cite.MONAI)
    ARCHS: Dict[str, str] = {}
    DEFAULT_CHANNELS: List[int] = []

    def _m(self) -> Dict[str, Any]:
        return self.cfg.get("model") or {}

    def _architecture(self, in_channels: int, out_channels: int) -> Dict[str, Any]:
        m = self._m()
        arch = str(m.get("arch", "segresnet"))
        if arch not in self.ARCHS:
            raise ConfigError(f"model.arch must be one of {', '.join(self.ARCHS)} (got {arch!r})")
        kw: Dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels}
        if int(m.get("input_downsample", 1)) > 1:
            kw["input_downsample"] = int(m["input_downsample"])
        if arch == "segresnet":
            kw["init_filters"] = int(m.get("init_filters", 8))
        else:
            kw["channels"] = list(m.get("channels", self.DEFAULT_CHANNELS))
            kw["strides"] = list(m.get("strides", [2] * (len(kw["channels"]) - 1)))
        return {"builder": self.ARCHS[arch], "kwargs": kw}

    def training_step(self, model, batch, device):
        x, y = batch
        x, y = x.to(device), y.to(device)
        if not hasattr(self, "_loss"):
            self._loss = _loss_fn((self.cfg.get("train") or {}).get("loss"))
        return self._loss(model(x), y)


@register_task("segmentation-brats")
class SegmentationBrats(_SegmentationTask):
    ARCHS = ARCH_3D
    DEFAULT_CHANNELS = [8, 16, 32, 64]

    def _data(self) -> Path:
        d = self.cfg.get("data")
        if not d or not Path(d).is_dir():
            raise ConfigError(f"data folder not found: {d!r} (expected BraTS case folders "
                              "BraTS2021_<id>/ with t1, t1ce, t2, flair and seg NIfTI files)")
        return Path(d)

    def sequences(self) -> List[str]:
        return list(self._m().get("sequences") or ["t1", "t1ce", "t2", "flair"])

    def patients(self) -> List[PatientRecord]:
        """The labelled case folders of ``data``; ``data`` itself when it is one labelled case
        folder (its own *seg* file and images, no labelled case folders inside): a cohort of
        one, so ``radiogen evaluate MODEL CASE_FOLDER`` scores that case."""
        data = self._data()
        out = []
        for f in sorted(data.iterdir()):
            if not f.is_dir():
                continue
            segs = glob.glob(str(f / "*seg*.nii*"))
            if not segs:
                continue
            out.append(PatientRecord(patient_id=f.name, info={"path": str(f)}))
        if not out and glob.glob(str(data / "*seg*.nii*")):
            out = [PatientRecord(patient_id=data.name, info={"path": str(data)})]
        if not out:
            raise ConfigError(f"no labelled cases in {data}: expected a case folder with its "
                              "images and a *seg*.nii.gz labels file, or a folder of such case "
                              "folders")
        self._paths = {r.patient_id: r.info["path"] for r in out}
        return out

    def use_patients(self, records: List[PatientRecord]) -> None:
        """Refuse, before any training, the cases of the run that lack a sequence the model
        trains on (read from the file names, no pixel data): otherwise the first fold that
        tests or trains on such a case fails after the earlier folds have trained."""
        from ...io import scan_case
        need = self.sequences()
        lacking = []
        for r in records:
            have = scan_case(self._path(r.patient_id))["sequences"]
            miss = [s for s in need if s not in have]
            if miss:
                lacking.append(f"{r.patient_id} lacks {', '.join(miss)}")
        if lacking:
            more = f"; and {len(lacking) - 5} more case(s)" if len(lacking) > 5 else ""
            raise ConfigError(f"{'; '.join(lacking[:5])}{more}: the model trains on "
                              f"{', '.join(need)} (model.sequences); add the missing files or "
                              "leave those cases out of --data")

    def _card_like(self) -> Dict[str, Any]:
        out = {"sequences": self.sequences(),
               "spacing_mm": float(self._m().get("spacing_mm", 2.0)), "normalisation": "zscore",
               "roi_size": list(self._m().get("roi_size", [96, 112, 96])), "dims": 3}
        if self._m().get("overlap") is not None:      # sliding-window overlap (default 0.25)
            out["overlap"] = float(self._m()["overlap"])
        return out

    def _items(self, ids: Sequence[str]) -> List[Dict[str, Any]]:
        return [prepare_brats_case(self._path(pid), self._card_like()) for pid in ids]

    def _path(self, pid: str) -> str:
        """The folder of case ``pid`` (``data/pid``, or ``data`` itself for a cohort of one)."""
        if getattr(self, "_paths", None) is None:
            self.patients()
        return str(self._paths.get(pid, self._data() / pid))

    def make_datasets(self, train_ids, val_ids):
        m = self._m()
        t = self.cfg.get("train") or {}
        train = _BratsTrain(self._items(train_ids), n=int(m.get("samples_per_epoch", 24)),
                            patch=m.get("patch_size", [64, 64, 64]),
                            pos_fraction=float(m.get("pos_fraction", 0.6)),
                            augment=bool(t.get("augment", True)), seed=int(self.cfg.get("seed", 0)),
                            et_fraction=float(m.get("et_fraction", 0.0)))
        return train, _BratsEval(self._items(val_ids))

    def architecture(self) -> Dict[str, Any]:
        return self._architecture(len(self.sequences()), 3)

    def evaluate(self, model, dataset, device) -> Dict[str, Any]:
        """Dice (and HD95) per case of the labels inference returns: the labels of
        ``core.segment.segment`` with this model's ``postprocess`` (label assembly: per-region
        thresholds, the T1ce-enhancement ET rule, which reads the case's images; then the
        cleanup), so the figures are those of ``radiogen segment``. With a postprocess, the
        plain network (threshold 0.5, nothing else) is scored beside it as ``dice_*_raw``."""
        from ...io import load_case
        from ...segment import (REGION_ORDER, compare_to_truth, native_labels,
                                postprocess_labels, probs_to_native, volume_probs)
        was = model.training
        model.eval()
        preds = []
        card = self._card_like()
        pp = self._m().get("postprocess") or None
        for it in dataset:
            self.check_cancel()
            probs = volume_probs(model, it["x"], card, str(device))
            native = probs_to_native(it["prepared"], probs)
            row = {"patient_id": it["id"]}
            if pp:
                raw = compare_to_truth(native_labels(native, None, None, it["prepared"]),
                                       it["truth"], with_hd95=False)
                for r in REGION_ORDER:
                    row[f"dice_{r}_raw"] = raw[r]["dice"]
                # the ET rule reads the case's T1ce (not kept with the prepared case)
                case = None
                if pp.get("enhancement"):
                    if not it.get("folder"):
                        raise ConfigError(f"{it['id']}: the postprocess ET rule (enhancement) "
                                          "needs the case's images, and its folder is not known")
                    case = load_case(it["folder"])
                lab = native_labels(native, pp, case, it["prepared"])
                del case
                lab = postprocess_labels(lab, it["prepared"].native_geometry, pp)
            else:
                lab = native_labels(native, None, None, it["prepared"])
            m = compare_to_truth(lab, it["truth"], it["prepared"].native_geometry,
                                 with_hd95=bool(self._m().get("eval_hd95", True)))
            for r in REGION_ORDER:
                row[f"dice_{r}"] = m[r]["dice"]
                if "hd95_mm" in m[r]:
                    row[f"hd95_{r}"] = m[r]["hd95_mm"]
            preds.append(row)
        model.train(was)
        out: Dict[str, Any] = {"predictions": preds}
        for r in REGION_ORDER:
            vals = [p[f"dice_{r}"] for p in preds]
            out[f"dice_{r}"] = float(np.mean(vals)) if vals else float("nan")
            if preds and f"dice_{r}_raw" in preds[0]:
                out[f"dice_{r}_raw"] = float(np.mean([p[f"dice_{r}_raw"] for p in preds]))
        out["score"] = float(np.mean([out[f"dice_{r}"] for r in REGION_ORDER])) if preds else 0.0
        return out

    def baseline(self, train_ids, test_ids) -> Dict[str, float]:
        """FLAIR > brain mean + 1.6 SD, largest component (WT only), on the native grid."""
        from ...io import load_case
        from ...segment import brats_baseline_wt, dice
        vals = []
        for pid in test_ids:
            case = load_case(self._path(pid))
            vals.append(dice(brats_baseline_wt(case.sequences["flair"].array),
                             case.labels.array > 0))
        return {"dice_WT": float(np.mean(vals))} if vals else {}

    def card_fields(self) -> Dict[str, Any]:
        c = self._card_like()
        return {"sequences": c["sequences"], "required_sequences": c["sequences"], "dims": 3,
                "spacing_mm": c["spacing_mm"], "roi_size": c["roi_size"],
                "input_size": c["roi_size"], "normalisation": "zscore",
                "preprocessing": "brain crop (non-zero), resample to spacing_mm (linear), "
                                 "z-score per sequence over the brain",
                "outputs": "3 sigmoid channels: WT, TC, ET (nested BraTS regions), threshold 0.5 "
                           "on the native grid after linear resampling of the probabilities",
                "classes": {"0": "background", "1": "necrotic/non-enhancing core",
                            "2": "oedema", "4": "enhancing tumour"},
                "regions": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
                "datasets": DATASET_BRATS, "citations": CITE_BRATS,
                **({"overlap": c["overlap"]} if "overlap" in c else {}),
                **({"postprocess": dict(self._m()["postprocess"])}
                   if self._m().get("postprocess") else {})}


# ==========================================================================================
# 2D TCGA-LGG
# ==========================================================================================

_PACK_CACHE: Dict[str, Dict[str, Any]] = {}


def read_pack_for_training(path: str) -> Dict[str, Any]:
    """One TCGA-LGG pack: uint8 (n, 3, H, W) in SLICE_SEQUENCES order, per-channel
    (mean, sd) over non-zero pixels, availability, mask (n, H, W)."""
    import h5py
    from ...segment import SLICE_SEQUENCES

    if path in _PACK_CACHE:
        return _PACK_CACHE[path]
    with h5py.File(path, "r") as f:
        img = f["image"][()]
        mask = f["mask"][()].astype(np.uint8)
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in f.attrs.get("channel_names", ["t1", "flair", "t1ce"])]
        avail = np.asarray(f.attrs.get("available", [True] * img.shape[1]), dtype=bool)
        pid = f.attrs.get("patient_id", Path(path).stem)
        pid = pid.decode() if isinstance(pid, bytes) else str(pid)
    order = [names.index(s) for s in SLICE_SEQUENCES]
    img = np.ascontiguousarray(img[:, order])
    av = np.array([bool(avail[j]) for j in order])
    stats = []
    for c in range(img.shape[1]):
        v = img[:, c][img[:, c] > 0].astype(np.float32)
        stats.append((float(v.mean()), max(float(v.std()), 1e-6)) if v.size >= 16 else (0.0, 1.0))
    item = {"id": pid, "img": img, "stats": np.array(stats, np.float32), "avail": av,
            "mask": mask, "tumour_slices": np.flatnonzero(mask.reshape(len(mask), -1).any(1))}
    _PACK_CACHE[path] = item
    return item


def pack_input(item: Dict[str, Any], idx=slice(None), avail=None) -> np.ndarray:
    """Model input (n, 6, H, W) of some slices of a training pack (== ``slices_input``)."""
    img = item["img"][idx].astype(np.float32)
    if img.ndim == 3:
        img = img[None]
    av = item["avail"] if avail is None else avail
    n, c, h, w = img.shape
    out = np.zeros((n, 2 * c, h, w), np.float32)
    for k in range(c):
        if not av[k]:
            continue
        ch = img[:, k]
        mu, sd = item["stats"][k]
        z = (ch - mu) / sd
        z[ch <= 0] = 0.0
        out[:, k] = z
        out[:, c + k] = 1.0
    return out


class _LggTrain(_EpochSamples):
    def __init__(self, items, n, crop, pos_fraction, augment, drop_p, seed):
        self.items, self.n, self.crop = items, int(n), int(crop)
        self.pos, self.augment, self.drop_p, self.seed = float(pos_fraction), bool(augment), \
            float(drop_p), int(seed)
        self.pos_index = [(i, s) for i, it in enumerate(items) for s in it["tumour_slices"]]
        self.all_index = [(i, s) for i, it in enumerate(items) for s in range(len(it["mask"]))]

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        torch = _torch()
        rng = _rng_for(self.seed, self.epoch, k)
        pool = self.pos_index if (rng.random() < self.pos and self.pos_index) else self.all_index
        i, s = pool[int(rng.integers(len(pool)))]
        it = self.items[i]
        av = it["avail"].copy()
        if self.augment:
            for k2 in (1, 2):        # never drop FLAIR (index 0)
                if av[k2] and rng.random() < self.drop_p:
                    av[k2] = False
        x = pack_input(it, s, av)[0]
        y = it["mask"][s][None].astype(np.float32)
        h, w = y.shape[1:]
        c = self.crop
        if c < h or c < w:
            if rng.random() < self.pos and y.any():
                pts = np.argwhere(y[0] > 0)
                cy, cx = pts[int(rng.integers(len(pts)))]
                y0 = int(np.clip(cy - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, h - c))
                x0 = int(np.clip(cx - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, w - c))
            else:
                y0, x0 = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            x = x[:, y0:y0 + c, x0:x0 + c]
            y = y[:, y0:y0 + c, x0:x0 + c]
        if self.augment:
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            nc = x.shape[0] // 2
            sc = rng.uniform(0.9, 1.1, size=(nc, 1, 1)).astype(np.float32)
            sh = rng.uniform(-0.1, 0.1, size=(nc, 1, 1)).astype(np.float32)
            fg = x[:nc] != 0
            x = x.copy()
            x[:nc] = np.where(fg, x[:nc] * sc + sh, 0.0)
        return (torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                torch.from_numpy(np.ascontiguousarray(y, np.float32)))


class _LggEval:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def lgg_patient_dice(model, item, device, batch: int = 32, flair_only: bool = False,
                     postprocess: Optional[Dict[str, Any]] = None) -> Tuple[float, np.ndarray]:
    """Dice of one pack's mask as inference makes it (``core.segment.slices_labels`` with the
    card's ``postprocess``), and the mask."""
    from ...segment import dice, slices_labels
    av = item["avail"].copy()
    if flair_only:
        av[1:] = False
    x = pack_input(item, slice(None), av)
    pred = slices_labels(model, x, str(device), postprocess, batch=batch)[0] > 0
    return dice(pred, item["mask"] > 0), pred


@register_task("segmentation-lgg")
class SegmentationLGG(_SegmentationTask):
    ARCHS = ARCH_2D
    DEFAULT_CHANNELS = [8, 16, 32, 64, 128]

    def _files(self) -> Dict[str, str]:
        d = self.cfg.get("data")
        if not d or not Path(d).is_dir():
            raise ConfigError(f"data folder not found: {d!r} (expected TCGA-LGG .h5 packs)")
        files = {Path(f).stem: f for f in sorted(glob.glob(os.path.join(d, "*.h5")))}
        if not files:
            raise ConfigError(f"no .h5 slice packs in {d}")
        return files

    def patients(self) -> List[PatientRecord]:
        return [PatientRecord(patient_id=p, info={"path": f}) for p, f in self._files().items()]

    def make_datasets(self, train_ids, val_ids):
        files = self._files()
        m = self._m()
        t = self.cfg.get("train") or {}
        tr = [read_pack_for_training(files[p]) for p in train_ids]
        va = [read_pack_for_training(files[p]) for p in val_ids]
        train = _LggTrain(tr, n=int(m.get("samples_per_epoch", 512)), crop=int(m.get("crop", 96)),
                          pos_fraction=float(m.get("pos_fraction", 0.5)),
                          augment=bool(t.get("augment", True)),
                          drop_p=float(m.get("drop_sequence_p", 0.2)),
                          seed=int(self.cfg.get("seed", 0)))
        return train, _LggEval(va)

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__(cfg)
        from ...segment import slice_postprocess_problems
        problems = slice_postprocess_problems(self._m().get("postprocess"))
        if problems:             # refused when the task is made, before any data is read
            raise ConfigError("model." + "; ".join(problems))

    def architecture(self) -> Dict[str, Any]:
        return self._architecture(6, 1)

    def evaluate(self, model, dataset, device) -> Dict[str, Any]:
        was = model.training
        model.eval()
        preds = []
        pp = self._m().get("postprocess")
        for it in dataset:
            self.check_cancel()
            # score what inference returns (the card's postprocess), and the raw network
            d, _ = lgg_patient_dice(model, it, device, postprocess=pp)
            row = {"patient_id": it["id"], "dice_WT": d}
            if pp:
                row["dice_WT_raw"] = lgg_patient_dice(model, it, device)[0]
            if self._m().get("eval_flair_only", False):
                row["dice_WT_flair_only"] = lgg_patient_dice(model, it, device, flair_only=True,
                                                             postprocess=pp)[0]
            preds.append(row)
        model.train(was)
        vals = [p["dice_WT"] for p in preds]
        out: Dict[str, Any] = {"predictions": preds,
                               "dice_WT": float(np.mean(vals)) if vals else float("nan"),
                               "score": float(np.mean(vals)) if vals else 0.0}
        for k in ("dice_WT_raw", "dice_WT_flair_only"):
            if preds and k in preds[0]:
                out[k] = float(np.mean([p[k] for p in preds]))
        return out

    def baseline(self, train_ids, test_ids) -> Dict[str, float]:
        """FLAIR > head mean + 1.1 SD in an eroded Otsu head mask, largest 3D component."""
        from ...segment import dice, pack_baseline_wt
        files = self._files()
        vals = []
        for pid in test_ids:
            it = read_pack_for_training(files[pid])
            vals.append(dice(pack_baseline_wt(it["img"][:, 0]), it["mask"] > 0))
        return {"dice_WT": float(np.mean(vals))} if vals else {}

    def card_fields(self) -> Dict[str, Any]:
        from ...io.pack import NOMINAL_INPLANE_MM, NOMINAL_SLICE_MM
        from ...segment import SLICE_SEQUENCES
        return {"sequences": list(SLICE_SEQUENCES), "required_sequences": ["flair"], "dims": 2,
                "spacing_mm": None, "input_size": [128, 128],
                "normalisation": "z-score per patient and sequence over non-zero pixels; "
                                 "missing sequence -> zeros + availability channel 0",
                "inputs": "6 channels: flair, t1, t1ce (z-scored) + 3 availability flags",
                "outputs": "1 sigmoid channel: FLAIR abnormality (threshold 0.5)",
                "classes": {"0": "background", "1": "FLAIR abnormality"},
                "regions": {"WT": [1]}, "datasets": DATASET_LGG, "citations": CITE_LGG,
                # spacing_mm stays null: inference reads it as "resample to"; the 2D net works
                # on the packs' own grid, recorded here
                "input_grid": {"spacing_mm": [NOMINAL_INPLANE_MM, NOMINAL_INPLANE_MM],
                               "slice_mm": NOMINAL_SLICE_MM,
                               "note": "the packs' nominal 128 x 128 grid; not resampled"},
                **({"postprocess": dict(self._m()["postprocess"])}
                   if self._m().get("postprocess") else {})}
