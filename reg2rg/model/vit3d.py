"""A 3D vision transformer in RadFM's layout: linear patch embedding, learned per-axis position tables, pre-norm
blocks. Input [N, C, X, Y, Z] (see `config.py` for the axis order), output [N, tokens, dim] with tokens in
(x, y, z) grid order, z fastest. Dropout where RadFM's ViT has it (ViTConfig.dropout, emb_dropout; 0 by default):
on the attention weights, the attention output, the MLP's hidden and output activations, and the embeddings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reg2rg.model.config import ViTConfig


class PatchEmbed3D(nn.Module):
    """Cut the volume into patches, flatten each as (px, py, pz, channel), then LayerNorm -> Linear -> LayerNorm."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        patch_dim = math.prod(self.patch_size) * in_channels
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        n, c, sx, sy, sz = x.shape
        px, py, pz = self.patch_size
        if sx % px or sy % py or sz % pz:
            raise ValueError(f"volume size {(sx, sy, sz)} is not divisible by the patch size {self.patch_size}")
        grid = (sx // px, sy // py, sz // pz)
        x = x.reshape(n, c, grid[0], px, grid[1], py, grid[2], pz)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(n, math.prod(grid), px * py * pz * c)
        return self.norm_out(self.proj(self.norm_in(x))), grid


class PositionEmbedding3D(nn.Module):
    """One learned table per axis, each dim // 3 wide, concatenated (x, y, z).

    A table longer than the patch grid is read at every (table // grid)-th row, ending on the last row of each
    stride, which is how RadFM reads its 512-voxel tables for smaller inputs.
    """

    def __init__(self, dim: int, table_sizes: tuple[int, int, int]):
        super().__init__()
        part = dim // 3
        self.x_table = nn.Embedding(table_sizes[0], part)
        self.y_table = nn.Embedding(table_sizes[1], part)
        self.z_table = nn.Embedding(table_sizes[2], part)
        for table in (self.x_table, self.y_table, self.z_table):
            nn.init.uniform_(table.weight)

    @staticmethod
    def _rows(table: nn.Embedding, n: int) -> torch.Tensor:
        size = table.num_embeddings
        if size % n:
            raise ValueError(f"position table of {size} rows cannot serve a grid of {n} patches")
        idx = (torch.arange(n, device=table.weight.device) + 1) * (size // n) - 1
        return table(idx)

    def forward(self, grid: tuple[int, int, int]) -> torch.Tensor:
        gx, gy, gz = grid
        ex = self._rows(self.x_table, gx)[:, None, None, :].expand(gx, gy, gz, -1)
        ey = self._rows(self.y_table, gy)[None, :, None, :].expand(gx, gy, gz, -1)
        ez = self._rows(self.z_table, gz)[None, None, :, :].expand(gx, gy, gz, -1)
        return torch.cat([ex, ey, ez], dim=-1).reshape(gx * gy * gz, -1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.proj = nn.Linear(heads * dim_head, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, t, self.heads * self.dim_head)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dim_head, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class ViT3D(nn.Module):
    def __init__(self, config: ViTConfig, input_size: tuple[int, int, int]):
        super().__init__()
        self.in_channels = config.in_channels
        self.grid = tuple(s // p for s, p in zip(input_size, config.patch_size))
        self.patch_embed = PatchEmbed3D(config.patch_size, config.in_channels, config.dim)
        self.pos_embed = PositionEmbedding3D(config.dim, config.pos_grid or self.grid)
        self.emb_drop = nn.Dropout(config.emb_dropout)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.dim_head, config.mlp_dim, config.dropout)
            for _ in range(config.depth)
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(f"expected 1 or {self.in_channels} channels, got {x.shape[1]}")
            x = x.expand(-1, self.in_channels, -1, -1, -1)
        x, grid = self.patch_embed(x)
        x = self.emb_drop(x + self.pos_embed(grid).to(x.dtype))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x
