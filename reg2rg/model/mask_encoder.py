"""The geometry branch: a light 3D ViT on a region's mask in the global input's frame (the body crop; area-resized,
values in [0, 1]: reg2rg.transforms.region_geometry_input), mean-pooled to one vector.

The linear layer to the LLM width lives in `Reg2RGModel.mask_proj`, beside the image branch's projection.
"""
from __future__ import annotations

import torch
from torch import nn

from reg2rg.model.config import ViTConfig
from reg2rg.model.vit3d import ViT3D


class MaskEncoder(nn.Module):
    def __init__(self, config: ViTConfig, input_size: tuple[int, int, int]):
        super().__init__()
        self.vit = ViT3D(config, input_size)
        self.dim = config.dim

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """[N, 1, X, Y, Z] masks (0/1) -> [N, dim]."""
        return self.vit(masks).mean(dim=1)
