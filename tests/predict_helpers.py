"""Helpers for the prediction tests: a tiny random-weight model in the user's model folder and
HDF5 packs written from phantoms (no trained weights needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = "predict_tiny_test"


def make_tiny_model(name: str = TINY, clinical: bool = True,
                    sequences=("t1", "flair", "t1ce"), kind: str = "mil") -> Path:
    """Save a 2-member MIL ensemble with random weights under ``$RADIOGEN_MODELS_DIR``
    (``kind="mil_roi"``: the tumour-centred variant, which needs the case's segmentation;
    ``kind="volume3d_roi"``: a 2-member 3D CNN on that tumour-centred window)."""
    import torch
    from napari_radiogen.core.models import build_from_card, new_card, save_model, user_models_dir
    from napari_radiogen.core.predict import CLASSES, PREP, PREP_ROI

    path = user_models_dir() / f"{name}.safetensors"
    if path.exists():
        return path
    kw = {"n_members": 2, "sequences": list(sequences), "widths": [4, 8, 8, 8],
          "layers": [1, 1, 1, 1], "attn_hidden": 8, "embed_dim": 8, "fusion_hidden": 8,
          "clinical": clinical, "survival": True}
    builder = "src_models.mil:build_mil_ensemble"
    if kind == "volume3d_roi":
        kw = {"n_members": 2, "sequences": list(sequences), "widths": [4, 8, 8, 8],
              "layers": [1, 1, 1, 1], "clinical": clinical, "survival": True, "depth": 16}
        builder = "src_models.cnn3d:build_cnn3d_ensemble"
    roi = kind in ("mil_roi", "volume3d_roi")
    torch.manual_seed(0)
    m = build_from_card({"architecture": {"builder": builder, "kwargs": kw}})
    card = new_card(name, "prediction", {"builder": builder, "kwargs": kw},
                    sequences=kw["sequences"], required_sequences=["flair"], classes=CLASSES,
                    normalisation=PREP_ROI if roi else PREP,
                    input={"kind": kind, **({"segmentation": {"slices": "seg_lgg_segresnet2d"}}
                                            if roi else {}),
                           **({"depth": 16} if kind == "volume3d_roi" else {})},
                    clinical={"used": clinical, "age_mean": 45.0, "age_sd": 15.0,
                              "sex_mean": 0.5},
                    metrics={"idh": {"auc_mean": 0.5, "auc_ci95": [0.4, 0.6]}})
    save_model(path, m.state_dict(), card)
    return path


def write_pack(path: Path, case, available=(True, True, True)) -> Path:
    """Write a phantom pack case to a TCGA-LGG style .h5 (channels t1, flair, t1ce)."""
    import h5py
    names = ["t1", "flair", "t1ce"]
    img = np.stack([np.clip(case.sequences[n].array, 0, 255).astype(np.uint8) if n in case.sequences
                    else np.clip(case.sequences["flair"].array, 0, 255).astype(np.uint8)
                    for n in names], axis=1)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=img)
        if case.labels is not None:
            f.create_dataset("mask", data=case.labels.array.astype(np.uint8))
        f.attrs["channel_names"] = np.array(names, dtype=object)
        f.attrs["available"] = np.array(available, dtype=bool)
    return path


def make_ensemble(name: str, members, risk_mean=None, risk_sd=None) -> Path:
    """Save a late-fusion model (``src_models.fusion``) of installed/shipped ``members``."""
    from napari_radiogen.core.models import new_card, save_model, user_models_dir
    from napari_radiogen.core.predict import CLASSES
    from src_models.fusion import LateFusion
    members = list(members)
    risk_mean = list(risk_mean or [0.0] * len(members))
    risk_sd = list(risk_sd or [1.0] * len(members))
    path = user_models_dir() / f"{name}.safetensors"
    card = new_card(name, "prediction",
                    {"builder": "src_models.fusion:late_fusion",
                     "kwargs": {"members": members, "risk_mean": risk_mean, "risk_sd": risk_sd}},
                    sequences=["t1", "flair", "t1ce"], required_sequences=["flair"],
                    classes=CLASSES, input={"kind": "ensemble", "members": members},
                    clinical={"used": True})
    save_model(path, LateFusion(members, risk_mean, risk_sd).state_dict(), card)
    return path
