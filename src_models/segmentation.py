"""Segmentation networks: MONAI SegResNet and an attention U-Net, 3D and 2D.

Builders take JSON-able keyword arguments only (they are named in model cards as
``"src_models.segmentation:<function>"``) and return a plain ``torch.nn.Module`` that maps
``(N, in_channels, *spatial)`` to ``(N, out_channels, *spatial)`` logits. No I/O here.

Output conventions used by the project:
* BraTS sub-region models: 3 sigmoid channels, the nested regions WT, TC, ET (BraTS style).
* Whole-tumour models: 1 sigmoid channel.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


class Downsampled(nn.Module):
    """Run ``net`` at 1/``factor`` resolution: average-pool the input, upsample the logits
    (linear) back to the input size. A cheap way to train/run a net on a coarser grid while
    keeping the input and output at the data's resolution."""

    def __init__(self, net: nn.Module, factor: int, spatial_dims: int):
        super().__init__()
        self.factor = int(factor)
        self.spatial_dims = int(spatial_dims)
        self.net = net

    def forward(self, x):
        import torch.nn.functional as F
        if self.factor <= 1:
            return self.net(x)
        size = x.shape[2:]
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        y = self.net(pool(x, self.factor))
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(y, size=size, mode=mode, align_corners=False)


def _maybe_down(net: nn.Module, input_downsample: int, spatial_dims: int) -> nn.Module:
    return Downsampled(net, input_downsample, spatial_dims) if int(input_downsample) > 1 else net


def segresnet(spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3,
              init_filters: int = 8, blocks_down: Sequence[int] = (1, 2, 2, 4),
              blocks_up: Sequence[int] = (1, 1, 1), dropout: float = 0.0,
              input_downsample: int = 1) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018, without the VAE branch)."""
    from monai.networks.nets import SegResNet
    return _maybe_down(SegResNet(spatial_dims=int(spatial_dims), in_channels=int(in_channels),
                     out_channels=int(out_channels), init_filters=int(init_filters),
                     blocks_down=tuple(int(b) for b in blocks_down),
                     blocks_up=tuple(int(b) for b in blocks_up),
                     dropout_prob=float(dropout) if dropout else None),
                       input_downsample, spatial_dims)


def attention_unet(spatial_dims: int = 3, in_channels: int = 4, out_channels: int = 3,
                   channels: Sequence[int] = (8, 16, 32, 64), strides: Sequence[int] = (2, 2, 2),
                   dropout: float = 0.0, input_downsample: int = 1) -> nn.Module:
    """MONAI AttentionUnet (Oktay et al. 2018): a U-Net with attention gates on the skips."""
    from monai.networks.nets import AttentionUnet
    chans = tuple(int(c) for c in channels)
    strs = tuple(int(s) for s in strides)
    if len(strs) != len(chans) - 1:
        raise ValueError("attention_unet: len(strides) must be len(channels) - 1")
    return _maybe_down(AttentionUnet(spatial_dims=int(spatial_dims),
                                     in_channels=int(in_channels),
                                     out_channels=int(out_channels), channels=chans,
                                     strides=strs, dropout=float(dropout)),
                       input_downsample, spatial_dims)


# Named variants (what the configs and cards use) -----------------------------------------

def segresnet_3d(**kw) -> nn.Module:
    kw.setdefault("spatial_dims", 3)
    return segresnet(**kw)


def segresnet_2d(**kw) -> nn.Module:
    kw.setdefault("spatial_dims", 2)
    kw.setdefault("in_channels", 6)
    kw.setdefault("out_channels", 1)
    return segresnet(**kw)


def attention_unet_3d(**kw) -> nn.Module:
    kw.setdefault("spatial_dims", 3)
    return attention_unet(**kw)


def attention_unet_2d(**kw) -> nn.Module:
    kw.setdefault("spatial_dims", 2)
    kw.setdefault("in_channels", 6)
    kw.setdefault("out_channels", 1)
    return attention_unet(**kw)


ARCHITECTURES = {
    ("segresnet", 3): "src_models.segmentation:segresnet_3d",
    ("segresnet", 2): "src_models.segmentation:segresnet_2d",
    ("attention_unet", 3): "src_models.segmentation:attention_unet_3d",
    ("attention_unet", 2): "src_models.segmentation:attention_unet_2d",
}
