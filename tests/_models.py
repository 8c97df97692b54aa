"""Small random-weight models written into a temporary user models folder, so the orchestration
(explain, pipeline, widgets) is tested without depending on what is shipped. Behaviour of the
shipped weights is tested separately where they exist."""
import os
from pathlib import Path

from napari_radiogen.core import predict as P
from napari_radiogen.core.models import build_from_card, new_card, save_model


def write_random_models(folder: Path) -> dict:
    import torch

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    arch = {"builder": "src_models.mil:build_mil_ensemble",
            "kwargs": {"n_members": 2, "widths": [8, 16, 32, 64]}}
    card = new_card("test_mil", "prediction", arch, sequences=["t1", "flair", "t1ce"],
                    required_sequences=["flair"], classes=P.CLASSES, input={"kind": "mil"},
                    clinical={"used": True, "age_mean": 45.0, "age_sd": 14.0})
    out["mil"] = save_model(folder / "test_mil.safetensors",
                            build_from_card(card).state_dict(), card)
    arch = {"builder": "src_models.cnn3d:build_cnn3d_ensemble",
            "kwargs": {"n_members": 2, "depth": 16}}
    card = new_card("test_cnn3d", "prediction", arch, sequences=["t1", "flair", "t1ce"],
                    required_sequences=["flair"], classes=P.CLASSES,
                    input={"kind": "volume3d", "depth": 16})
    out["cnn3d"] = save_model(folder / "test_cnn3d.safetensors",
                              build_from_card(card).state_dict(), card)
    arch = {"builder": "src_models.segmentation:segresnet_3d",
            "kwargs": {"in_channels": 4, "out_channels": 3, "init_filters": 8}}
    card = new_card("test_seg3d", "segmentation", arch, sequences=["t1", "t1ce", "t2", "flair"],
                    dims=3, spacing_mm=3.0, roi_size=[64, 64, 64], normalisation="zscore")
    out["seg"] = save_model(folder / "test_seg3d.safetensors",
                            build_from_card(card).state_dict(), card)
    return out
