"""Small random-weight models written into a temporary user models folder, so the orchestration
(explain, pipeline, widgets) is tested without depending on what is shipped. Behaviour of the
shipped weights is tested separately where they exist."""
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


#: a tiny 3D attention U-Net with the fields of a 2 mm BraTS sub-region card
TINY_BRATS_ARCH = {"builder": "src_models.segmentation:attention_unet_3d",
                   "kwargs": {"in_channels": 4, "out_channels": 3, "channels": [4, 8, 16, 32, 64],
                              "strides": [2, 2, 2, 2]}}
TINY_BRATS_FIELDS = dict(sequences=["t1", "t1ce", "t2", "flair"],
                         required_sequences=["t1", "t1ce", "t2", "flair"], dims=3,
                         spacing_mm=2.0, roi_size=[80, 112, 96], normalisation="zscore")


def constant_brats_net(name: str, bias, zero_weights: bool = False):
    """The tiny net with its last convolution's bias set to ``bias`` (WT, TC, ET logits) and,
    with ``zero_weights``, constant outputs; returns (net, arch, fields) for cards."""
    import torch

    torch.manual_seed(0)
    net = build_from_card(new_card(name, "segmentation", TINY_BRATS_ARCH, **TINY_BRATS_FIELDS))
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        if zero_weights:
            last.weight.zero_()
        last.bias.copy_(torch.as_tensor(bias, dtype=last.bias.dtype).expand_as(last.bias))
    return net, TINY_BRATS_ARCH, dict(TINY_BRATS_FIELDS)
