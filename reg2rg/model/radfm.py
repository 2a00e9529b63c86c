"""Load RadFM's released vision weights into our modules through explicit key maps.

RadFM ships two files:
- `RadFM_vit3d.pth`: the 3D ViT's state dict (RadFM's `vit_3d.ViT`: `to_patch_embedding.{1,2,3}` =
  LayerNorm, Linear, LayerNorm; `pos_embedding.{row,col,dep}_embed`; `transformer.layers.{i}.0` =
  PreNorm(Attention: `to_qkv`, `to_out.0`), `transformer.layers.{i}.1` = PreNorm(FeedForward: `net.0`, `net.3`)).
- `RadFM_perceiver_fc.pth`: `{"perceiver": <Flamingo PerceiverResampler state dict>, "fc": <Linear 768 -> 5120>}`
  (`latents`, `layers.{i}.0` = PerceiverAttention: `norm_media`, `norm_latents`, `to_q`, `to_kv`, `to_out`;
  `layers.{i}.1` = FeedForward Sequential: `0` LayerNorm, `1` Linear, `3` Linear; `norm`).

Every key must map, every module weight must be covered, and every shape must agree; otherwise an InputError
names the file and lists the missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from reg2rg.errors import InputError

log = logging.getLogger(__name__)

VIT_FILE = "RadFM_vit3d.pth"
PERCEIVER_FILE = "RadFM_perceiver_fc.pth"


def vit_key_map(depth: int) -> dict[str, str]:
    """RadFM ViT key -> our ViT3D key."""
    m = {}
    for radfm, ours in (("to_patch_embedding.1", "patch_embed.norm_in"), ("to_patch_embedding.2", "patch_embed.proj"),
                        ("to_patch_embedding.3", "patch_embed.norm_out")):
        for p in ("weight", "bias"):
            m[f"{radfm}.{p}"] = f"{ours}.{p}"
    # RadFM's tables index the input's axes in order: row = first spatial axis (our x), col = y, dep = z.
    m["pos_embedding.row_embed.weight"] = "pos_embed.x_table.weight"
    m["pos_embedding.col_embed.weight"] = "pos_embed.y_table.weight"
    m["pos_embedding.dep_embed.weight"] = "pos_embed.z_table.weight"
    for i in range(depth):
        src, dst = f"transformer.layers.{i}", f"blocks.{i}"
        m[f"{src}.0.fn.to_qkv.weight"] = f"{dst}.attn.qkv.weight"
        for p in ("weight", "bias"):
            m[f"{src}.0.norm.{p}"] = f"{dst}.attn_norm.{p}"
            m[f"{src}.0.fn.to_out.0.{p}"] = f"{dst}.attn.proj.{p}"
            m[f"{src}.1.norm.{p}"] = f"{dst}.mlp_norm.{p}"
            m[f"{src}.1.fn.net.0.{p}"] = f"{dst}.mlp.fc1.{p}"
            m[f"{src}.1.fn.net.3.{p}"] = f"{dst}.mlp.fc2.{p}"
    return m


def perceiver_key_map(depth: int) -> dict[str, str]:
    """RadFM (Flamingo) PerceiverResampler key -> our PerceiverResampler key."""
    m = {"latents": "latents", "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    for i in range(depth):
        src, dst = f"layers.{i}", f"layers.{i}"
        for name in ("to_q", "to_kv", "to_out"):
            m[f"{src}.0.{name}.weight"] = f"{dst}.attn.{name}.weight"
        for p in ("weight", "bias"):
            m[f"{src}.0.norm_media.{p}"] = f"{dst}.attn.norm_media.{p}"
            m[f"{src}.0.norm_latents.{p}"] = f"{dst}.attn.norm_latents.{p}"
            m[f"{src}.1.0.{p}"] = f"{dst}.ff.norm.{p}"
        m[f"{src}.1.1.weight"] = f"{dst}.ff.fc1.weight"
        m[f"{src}.1.3.weight"] = f"{dst}.ff.fc2.weight"
    return m


FC_KEY_MAP = {"weight": "weight", "bias": "bias"}


def _read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "RadFM checkpoint not found")
    try:
        try:  # mmap: names and shapes without reading every tensor into memory (zip-format files)
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format
    except Exception as err:  # torch raises several types for a bad or non-tensor pickle
        raise InputError(path, f"cannot read as a PyTorch checkpoint: {err}") from err
    if not isinstance(state, dict):
        raise InputError(path, f"expected a dict of tensors, found {type(state).__name__}")
    return state


def _strip(state: dict, prefix: str) -> dict:
    if state and all(str(k).startswith(prefix) for k in state):
        return {str(k)[len(prefix):]: v for k, v in state.items()}
    return state


def _fmt(keys: list[str], limit: int = 25) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def shape_problems(expected: dict[str, tuple], found: dict[str, tuple], *, optional=()) -> list[str]:
    """Missing, unexpected and mismatched keys of `found` (name -> shape) against `expected`, one line each kind
    (empty when they agree); keys in `optional` may be missing (tied weights, optional buffers)."""
    missing = sorted(k for k in expected if k not in found and k not in optional)
    unexpected = sorted(k for k in found if k not in expected)
    shapes = sorted(f"{k} (file {tuple(found[k])}, model {tuple(expected[k])})" for k in expected
                    if k in found and tuple(found[k]) != tuple(expected[k]))
    out = []
    if missing:
        out.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        out.append(f"unexpected keys: {_fmt(unexpected)}")
    if shapes:
        out.append(f"shape mismatches: {_fmt(shapes)}")
    return out


def mapping_problems(own: dict, state: dict, key_map: dict[str, str], what: str) -> str | None:
    """What keeps `state` (renamed by `key_map`) from loading strictly into a module whose state dict is `own`
    (tensors, meta-device ones too: only names and shapes are compared), in the file's key names; None when it
    fits."""
    inverse = {v: k for k, v in key_map.items()}
    expected = {inverse.get(k, k): tuple(v.shape) for k, v in own.items()}
    problems = shape_problems(expected, {str(k): tuple(v.shape) for k, v in state.items()})
    if not problems:
        return None
    return "; ".join([f"does not match RadFM's {what} layout for this config"] + problems)


def load_mapped(module: nn.Module, state: dict, key_map: dict[str, str], path, what: str) -> None:
    """Rename `state` by `key_map` and load it into `module` strictly; InputError listing every mismatch."""
    problem = mapping_problems(module.state_dict(), state, key_map, what)
    if problem:
        raise InputError(path, problem)
    module.load_state_dict({key_map[k]: v for k, v in state.items()}, strict=True)


def vit_state(path) -> dict:
    """The ViT state dict of RadFM_vit3d.pth (a `state_dict`/`model` container and a `module.` prefix removed)."""
    state = _read(path)
    for container in ("state_dict", "model"):
        if set(state) == {container} and isinstance(state[container], dict):
            state = state[container]
    return _strip(state, "module.")


def perceiver_state(path) -> tuple[dict, dict | None]:
    """The "perceiver" state dict of RadFM_perceiver_fc.pth (prefixes removed) and its "fc" one (None if absent)."""
    state = _read(path)
    if "perceiver" not in state or not isinstance(state["perceiver"], dict):
        raise InputError(path, f"expected a dict with a 'perceiver' state dict, found keys {_fmt(sorted(map(str, state)))}")
    fc = state["fc"] if isinstance(state.get("fc"), dict) else None
    return _strip(_strip(state["perceiver"], "module."), "perceiver."), fc


def load_radfm_vit(vit: nn.Module, path) -> None:
    """RadFM_vit3d.pth into a ViT3D (its depth decides the expected keys)."""
    state = vit_state(path)
    load_mapped(vit, state, vit_key_map(len(vit.blocks)), path, "ViT")
    log.info("loaded RadFM ViT weights from %s", path)


def load_radfm_perceiver(perceiver: nn.Module, path, fc: nn.Linear | None = None) -> None:
    """The "perceiver" part of RadFM_perceiver_fc.pth into a PerceiverResampler; its "fc" into `fc` if given."""
    sub, fc_state = perceiver_state(path)
    load_mapped(perceiver, sub, perceiver_key_map(len(perceiver.layers)), path, "Perceiver")
    log.info("loaded RadFM Perceiver weights from %s", path)
    if fc is not None:
        if fc_state is None:
            raise InputError(path, "load_radfm_fc is set but the file holds no 'fc' state dict")
        load_mapped(fc, fc_state, FC_KEY_MAP, path, "fc")
        log.info("loaded RadFM fc weights from %s", path)
