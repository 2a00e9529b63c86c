"""Perceiver resampler (Flamingo's, as RadFM uses it): a fixed set of learned latents cross-attends to the
ViT tokens `depth` times, keys and values taken over the tokens and the latents together. [N, T, D] -> [N, L, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reg2rg.model.config import PerceiverConfig


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self._split(self.to_q(latents))
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, self._split(k), self._split(v))
        n, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, length, self.heads * self.dim_head))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, config: PerceiverConfig):
        super().__init__()
        self.attn = PerceiverAttention(dim, config.heads, config.dim_head)
        self.ff = FeedForward(dim, config.ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, config: PerceiverConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim, config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(media.dtype).unsqueeze(0).expand(media.shape[0], -1, -1)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                latents = checkpoint(layer, media, latents, use_reentrant=False)
            else:
                latents = layer(media, latents)
        return self.norm(latents)
