"""Compact 2D classifiers for tumour-type triage of single MRI slices (4 classes).

Both are MONAI networks trained from scratch: a small 2D ResNet (basic blocks, stride-2 stem)
and a small 2D ViT (``classification=True``). Plain torch modules; JSON-able builder kwargs.
The ViT wrapper returns logits only (MONAI's ViT returns ``(logits, hidden_states)``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ViTLogits(nn.Module):
    """MONAI ``ViT`` (2D, classification) that returns only the class logits."""

    def __init__(self, img_size: int = 64, patch_size: int = 8, hidden_size: int = 128,
                 mlp_dim: int = 256, num_layers: int = 4, num_heads: int = 4,
                 n_classes: int = 4, in_channels: int = 1, dropout_rate: float = 0.1):
        super().__init__()
        from monai.networks.nets import ViT

        self.grid = img_size // patch_size
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                       hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers,
                       num_heads=num_heads, classification=True, num_classes=n_classes,
                       dropout_rate=dropout_rate, spatial_dims=2, post_activation=None,
                       qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def build_triage_resnet(n_classes: int = 4, in_channels: int = 1,
                        layers: Sequence[int] = (1, 1, 1, 1),
                        widths: Sequence[int] = (16, 32, 64, 128), stem_kernel: int = 5):
    """A compact MONAI 2D ResNet (basic blocks; stem conv stride 2 + max-pool)."""
    from monai.networks.nets import ResNet

    return ResNet("basic", list(layers), list(widths), spatial_dims=2,
                  n_input_channels=in_channels, num_classes=n_classes,
                  conv1_t_size=stem_kernel, conv1_t_stride=2)


def build_triage_vit(n_classes: int = 4, in_channels: int = 1, img_size: int = 64,
                     patch_size: int = 8, hidden_size: int = 128, mlp_dim: int = 256,
                     num_layers: int = 4, num_heads: int = 4, dropout_rate: float = 0.1):
    """A small MONAI 2D ViT (classification token) returning logits."""
    return ViTLogits(img_size=img_size, patch_size=patch_size, hidden_size=hidden_size,
                     mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads,
                     n_classes=n_classes, in_channels=in_channels, dropout_rate=dropout_rate)


def cam_target_layer(model: nn.Module) -> str:
    """Name of the layer a 2D Grad-CAM should hook: the last conv stage of the ResNet, or the
    second-to-last transformer block of the ViT (its patch tokens form a grid; the patch tokens
    leaving the last block no longer reach the class token, so their gradient is zero)."""
    if isinstance(model, ViTLogits):
        return f"vit.blocks.{max(len(model.vit.blocks) - 2, 0)}"
    if hasattr(model, "layer4"):
        return "layer4"
    raise ValueError(f"no Grad-CAM target layer known for {type(model).__name__}")
