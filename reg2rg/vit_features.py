"""The frozen-ViT feature cache (`training.cache_vit_features`, docs/performance.md): with the ViT frozen and
in eval mode its outputs for a scan's global input and region crops never change, so they are computed once
(`cache_vit_features`, fp16, `{work}/vit_features/{case_id}.safetensors`) and the training loop (reg2rg.train)
reads them through `VitFeatureDataset` instead of running the ViT.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reg2rg.files import atomic_path

VIT_FEATURES_DIR = "vit_features"


def vit_digest(visual) -> str:
    """sha256 of the ViT's weights: cached features belong to exactly these."""
    h = hashlib.sha256()
    for name, t in sorted(visual.vit.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _features_ok(path: Path, digest: str, input_layout: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return meta.get("vit_sha256") == digest and meta.get("input_layout") == input_layout
    except Exception:  # missing or unreadable: compute again
        return False


def cache_vit_features(visual, dataset, folder, *, input_layout: str, device="cpu", rank: int = 0,
                       processes: int = 1, autocast=None) -> int:
    """Write the frozen ViT's outputs of every scan of `dataset` (this process: scans rank, rank + processes,
    ...) to `folder/{case_id}.safetensors`: "global" [T, dim] and "texture" [R, T, dim] (fp16, the item's
    regions in its order, listed in the metadata with the ViT's digest and the `input_layout` the volumes were
    given in, the model config's). Files of the same ViT and input layout are kept; others are computed again.
    `autocast`: a callable returning the context to run the ViT in (accelerator.autocast).
    Returns the number of scans computed."""
    import contextlib

    import torch
    from safetensors.torch import save_file

    from reg2rg.dataset import case_ids, to_input_layout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = vit_digest(visual)
    ids = case_ids(dataset)
    dtype = visual.proj.weight.dtype
    done = 0
    for i in range(rank, len(dataset), processes):
        path = folder / f"{ids[i]}.safetensors"
        if _features_ok(path, digest, input_layout):
            continue
        item = dataset[i]
        vol = to_input_layout(torch.cat([item["global"][None], item["texture"]]), input_layout)  # [N, 1, X, Y, Z]
        with torch.no_grad(), (autocast() if autocast is not None else contextlib.nullcontext()):
            feats = visual.vit_features(vol.to(device=device, dtype=dtype)).to("cpu", torch.float16)
        with atomic_path(path) as tmp:
            save_file({"global": feats[0].contiguous(), "texture": feats[1:].contiguous()}, str(tmp),
                      metadata={"vit_sha256": digest, "input_layout": input_layout,
                                "regions": json.dumps([int(r) for r in item["regions"]])})
        done += 1
    return done


class VitFeatureDataset:
    """Dataset wrapper for training on cached ViT features (`cache_vit_features`): items hold "global_vit"
    [T, dim] and "texture_vit" [R, T, dim] (fp16, rows in the item's region order) instead of "global" and
    "texture"; a Reg2RGDataset underneath makes only the geometry inputs (images=False)."""

    def __init__(self, dataset, folder):
        import copy

        from reg2rg.dataset import case_ids

        self.folder, self.ids = Path(folder), case_ids(dataset)
        if hasattr(dataset, "images"):
            dataset = copy.copy(dataset)
            dataset.images = False
        self.dataset = dataset
        self.samples = getattr(dataset, "samples", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        from safetensors import safe_open

        item = {k: v for k, v in self.dataset[i].items() if k not in ("global", "texture")}
        path = self.folder / f"{self.ids[i]}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads(f.metadata()["regions"])
            texture = f.get_tensor("texture")
            item["global_vit"] = f.get_tensor("global")
        pos = [stored.index(int(r)) for r in item["regions"]]
        item["texture_vit"] = texture if pos == list(range(len(stored))) else texture[pos]
        return item
