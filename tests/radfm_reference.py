"""RadFM checkpoints for the tests: reference modules written in RadFM's layout (its module tree and key names),
independent of reg2rg's, and the two files a user downloads (RadFM_vit3d.pth, RadFM_perceiver_fc.pth) saved from
them with tiny random weights."""
from __future__ import annotations

import torch
from torch import nn

class _RadFMPatchEmbedding(nn.Module):
    """RadFM: Rearrange('b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)'), here by explicit slicing."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        (p1, p2, pf), (b, _, H, W, F) = self.p, x.shape
        rows = []
        for i in range(H // p1):
            for j in range(W // p2):
                for k in range(F // pf):
                    patch = x[:, :, i * p1:(i + 1) * p1, j * p2:(j + 1) * p2, k * pf:(k + 1) * pf]
                    rows.append(patch.permute(0, 2, 3, 4, 1).reshape(b, -1))
        return torch.stack(rows, dim=1)


class _PosEmb(nn.Module):
    def __init__(self, feats, nh, nw, nd):
        super().__init__()
        self.row_embed, self.col_embed, self.dep_embed = nn.Embedding(nh, feats), nn.Embedding(nw, feats), nn.Embedding(nd, feats)

    def forward(self, h, w, d):
        out = []
        for i in range(h):
            for j in range(w):
                for k in range(d):
                    ii = (i + 1) * (self.row_embed.num_embeddings // h) - 1
                    jj = (j + 1) * (self.col_embed.num_embeddings // w) - 1
                    kk = (k + 1) * (self.dep_embed.num_embeddings // d) - 1
                    out.append(torch.cat([self.row_embed.weight[ii], self.col_embed.weight[jj], self.dep_embed.weight[kk]]))
        return torch.stack(out)


class _PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = (q @ k.transpose(-1, -2) * self.dim_head ** -0.5).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).flatten(2))


class _FF(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class RadFMViT(nn.Module):
    def __init__(self, vit_cfg, input_size):
        super().__init__()
        p, dim = vit_cfg.patch_size, vit_cfg.dim
        patch_dim = p[0] * p[1] * p[2] * vit_cfg.in_channels
        self.p, self.grid = p, [s // q for s, q in zip(input_size, p)]
        self.to_patch_embedding = nn.Sequential(_RadFMPatchEmbedding(p), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.pos_embedding = _PosEmb(dim // 3, *vit_cfg.pos_grid)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            nn.ModuleList([_PreNorm(dim, _Attention(dim, vit_cfg.heads, vit_cfg.dim_head)), _PreNorm(dim, _FF(dim, vit_cfg.mlp_dim))])
            for _ in range(vit_cfg.depth))
        for prm in self.parameters():  # non-trivial LayerNorm affines too
            nn.init.normal_(prm, 0, 0.2)

    def forward(self, x):
        x = self.to_patch_embedding(x) + self.pos_embedding(*self.grid)
        for attn, ff in self.transformer.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class _PerceiverAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm_media(x), self.norm_latents(latents)
        split = lambda t: t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(latents)) * self.dim_head ** -0.5
        k, v = (split(t) for t in self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1))
        sim = q @ k.transpose(-1, -2)
        attn = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).flatten(2))


class RadFMPerceiver(nn.Module):
    def __init__(self, dim, cfg):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, cfg.heads, cfg.dim_head),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * cfg.ff_mult, bias=False), nn.GELU(),
                                         nn.Linear(dim * cfg.ff_mult, dim, bias=False))])
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)
        for prm in self.parameters():
            nn.init.normal_(prm, 0, 0.2)

    def forward(self, x):
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


def write_radfm_files(cfg, folder, fc_out=None):
    """RadFM_vit3d.pth and RadFM_perceiver_fc.pth for `cfg`'s sizes; returns the reference modules."""
    torch.manual_seed(1)
    vit, perceiver = RadFMViT(cfg.vit, cfg.input_size), RadFMPerceiver(cfg.vit.dim, cfg.perceiver)
    fc = nn.Linear(cfg.vit.dim, fc_out or 8)
    torch.save(vit.state_dict(), folder / "RadFM_vit3d.pth")
    torch.save({"perceiver": perceiver.state_dict(), "fc": fc.state_dict()}, folder / "RadFM_perceiver_fc.pth")
    return vit, perceiver, fc
