"""The training/test Dataset over the `cache` stage's files, the visual collate, batching (regions permuted,
prompts tokenized, the model's arguments) and the one axis permute from the data's [Z, Y, X] to the model's
order (`to_input_layout`). The pure transforms that make the inputs are in reg2rg.transforms.

Shared by training (reg2rg.train), generation (reg2rg.generate) and the benchmarks (reg2rg.bench).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from reg2rg.constants import INPUT_LAYOUTS, REGIONS
from reg2rg.errors import InputError
from reg2rg.transforms import Scratch, _in_worker, scan_inputs, size_zyx

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Data order to model order
# --------------------------------------------------------------------------------------------------------------


def to_input_layout(array, layout: str = "lps"):
    """Data order to model input: `array` [..., Z, Y, X] (the data's order, reg2rg.transforms'; the ingested
    volume's voxels, whose indices run to the patient's left (x), posterior (y) and superior (z)) -> [..., X, Y, Z]
    (the order the ViT and the mask encoder read, nibabel's) in the voxel order `layout` names:
      "lps"  axes swapped only (dims -1 and -3): model axis X (dim -3) runs from the patient's right to left,
             Y (dim -2) from anterior to posterior, Z (dim -1) from inferior to superior. A view.
      "ras"  also reversed along X and Y (dims -3 and -2): X runs left to right, Y posterior to anterior, Z
             still inferior to superior: the array nibabel gives for a file stored in RAS+ voxel order
             (`nib.as_closest_canonical`, SAT's and MONAI's `Orientation("RAS")`). A copy for a torch tensor
             (torch.flip), a view for a numpy array.
    numpy arrays and torch tensors of three or more dimensions; ValueError for another layout."""
    if layout not in INPUT_LAYOUTS:
        raise ValueError(f"input layout must be one of {', '.join(INPUT_LAYOUTS)}, got {layout!r}")
    if array.ndim < 3:
        raise ValueError(f"to_input_layout: expected [..., Z, Y, X], got shape {tuple(array.shape)}")
    if isinstance(array, torch.Tensor):
        out = array.transpose(-1, -3)
        return out if layout == "lps" else torch.flip(out, dims=(-3, -2))
    out = np.swapaxes(array, -1, -3)
    return out if layout == "lps" else out[..., ::-1, ::-1, :]


# --------------------------------------------------------------------------------------------------------------
# Dataset and collate
# --------------------------------------------------------------------------------------------------------------


def _text_or_none(t):
    if t is None:
        return None
    if isinstance(t, float) and t != t:
        return None
    t = str(t)
    return t if t.strip() else None


class Reg2RGDataset(torch.utils.data.Dataset):
    """One item per included scan of a manifest, read from the `cache` stage's files in `cache_dir`.

    Item (dict):
        case_id       str
        global        float32 [1, Z, Y, X]   the global input
        regions       list[int]               0-based indices into REGIONS of the regions used, ascending
                                              (random order when shuffle_regions)
        texture       float32 [R, 1, Z, Y, X] texture inputs (lfd=False: the LFD-off masked volumes instead)
        geometry      float32 [R, 1, Z, Y, X] geometry inputs
        region_texts  list[str | None]        the region reports, aligned with `regions`
        report        str | None              the whole report
    with (Z, Y, X) = input_size (x, y, z) reversed. The cache must have been built for this input size.

    Regions used: with text=True (training) those with a non-empty text, a mask present in the manifest and at
    least one mask voxel above -1000 HU in the cache; with text=False (test) every region with such a mask.
    A scan left with no region is left out and listed in `self.skipped` (case_id, reason) with a warning, as
    is an included scan whose cache files are missing.

    shuffle_regions: permute the regions of each item at random (torch's RNG, so DataLoader workers differ);
    the RRA target's region order must then follow `regions` (the prompt builder does that).
    torch_threads: torch's intra-op threads while an item is made (restored after; None: leave them). The
    loader's many small operations gain little from threads and lose a lot when another process keeps a core
    busy (every parallel region waits for a descheduled thread); DataLoader workers run with 1 anyway.
    images=False: items hold no "global" and "texture" (only "geometry"): for training on cached frozen-ViT
    features (training.cache_vit_features), which replace those inputs.
    """

    def __init__(self, manifest_df, cache_dir, input_size, split: str | None = None, text: bool = True,
                 lfd: bool = True, shuffle_regions: bool = False, torch_threads: int | None = 1,
                 images: bool = True):
        from reg2rg.errors import InputError

        self.cache_dir = Path(cache_dir)
        self.size = size_zyx(input_size)
        self.input_size = tuple(int(v) for v in input_size)
        self.text, self.lfd, self.shuffle_regions = bool(text), bool(lfd), bool(shuffle_regions)
        self.torch_threads = torch_threads
        self.images = bool(images)
        self._scratch: Scratch | None = None  # made in the process that loads (each DataLoader worker)
        df = manifest_df
        if split is not None:
            df = df[df["split"] == split]
        df = df[df["status"] == "included"]
        self.samples: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        for row in df.to_dict("records"):
            case = row["case_id"]
            meta_path = self.cache_dir / f"{case}.json"
            if not meta_path.is_file():
                self.skipped.append((case, f"{meta_path}: cache metadata not found (run the cache stage)"))
                continue
            meta = json.loads(meta_path.read_text())
            if tuple(meta.get("input_size") or ()) != self.input_size:
                raise InputError(meta_path, f"cache built for input size {meta.get('input_size')} (x, y, z), the "
                                            f"dataset asks for {list(self.input_size)}: rerun the cache stage "
                                            "with the model's input size")
            in_cache = {r["index"] for r in meta["regions"] if r["usable"]}
            texts = [_text_or_none(t) for t in list(row["region_texts"])]
            if self.text:
                present = set(list(row["regions_usable"]))
                regions = [i for i in range(len(REGIONS))
                           if i in in_cache and texts[i] is not None and REGIONS[i] in present]
            else:
                regions = sorted(in_cache)
            if not regions:
                self.skipped.append((case, "no region with " + ("a text and " if self.text else "")
                                     + "a non-empty mask inside the body"))
                continue
            self.samples.append({"case_id": case, "path": self.cache_dir / meta["file"], "regions": regions,
                                 "texts": texts, "report": _text_or_none(row.get("report"))})
        for case, reason in self.skipped:
            log.warning("dataset: %s left out: %s", case, reason)
        log.info("dataset%s: %d scans (%d left out), input size %s (x, y, z)",
                 f" {split}" if split else "", len(self.samples), len(self.skipped), self.input_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # DataLoader workers get the dataset without the scratch buffers
        return {**self.__dict__, "_scratch": None}

    def __getitem__(self, index: int) -> dict:
        from reg2rg.cache import read_cache

        s = self.samples[index]
        scan = read_cache(s["path"])
        regions = list(s["regions"])
        if self.shuffle_regions:
            regions = [regions[i] for i in torch.randperm(len(regions)).tolist()]
        if self._scratch is None:
            self._scratch = Scratch()
        before = torch.get_num_threads()
        if self.torch_threads and self.torch_threads != before:
            torch.set_num_threads(self.torch_threads)
        try:
            visual = scan_inputs(scan, regions, lfd=self.lfd, scratch=self._scratch, images=self.images)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        return visual | {
            "case_id": s["case_id"],
            "regions": regions,
            "region_texts": [s["texts"][i] for i in regions],
            "report": s["report"],
        }


def case_ids(dataset) -> list[str]:
    """The case ids of a dataset's items in order: from its `samples` when they name them (Reg2RGDataset's),
    else from the items themselves."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and all(isinstance(s, dict) and "case_id" in s for s in samples):
        return [s["case_id"] for s in samples]
    return [str(dataset[i]["case_id"]) for i in range(len(dataset))]


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along dim 0; inside a DataLoader worker straight into shared memory, as torch's default
    collate does, so the batch is not copied once more on its way to the main process. A batch of one item
    is its tensor itself (no copy of the 350 MB a paper-size sample holds)."""
    if len(tensors) == 1 and (tensors[0].is_shared() or not _in_worker()):
        return tensors[0]
    out = None
    if _in_worker():
        first = tensors[0]
        shape = (sum(t.shape[0] for t in tensors),) + tuple(first.shape[1:])
        storage = first._typed_storage()._new_shared(int(np.prod(shape)), device=first.device)
        out = first.new(storage).resize_(shape)
    return torch.cat(tensors, out=out)


def collate_visual(items: list[dict], tokenize: Callable[[list[dict]], dict] | None = None,
                   layout: str = "zyx", input_layout: str = "lps") -> dict:
    """Batch dataset items. The regions of all samples are concatenated (no padding of the visual side):
        case_id        list[str]
        global         float32 [B, 1, Z, Y, X]
        texture        float32 [N, 1, Z, Y, X]   N = sum of region_counts, sample by sample
        geometry       float32 [N, 1, Z, Y, X]
        region_counts  int64 [B]
        regions        int64 [N]   region indices (into REGIONS), in the same order
        region_texts   list[list[str | None]]
        report         list[str | None]
    `tokenize(items) -> dict of tensors` (the prompt builder: input_ids, attention_mask, labels padded to the
    longest sample of the batch, e.g. with `pad_to_longest`) is merged in; its keys must not clash.
    layout="xyz" makes the spatial axes the model's [..., X, Y, Z] in the voxel order `input_layout` (the model
    config's; `to_input_layout`), the same for global, texture and geometry: with "lps" a permuted VIEW, not a
    copy (a paper-size sample is ~350 MB; let the device transfer or the model make it contiguous); with "ras"
    a flipped copy.
    Items without "global" / "texture" (Reg2RGDataset(images=False)) give batches without them; items with
    cached frozen-ViT features give global_vit [B, T, dim] (stacked) and texture_vit [N, T, dim] (concatenated)."""
    if not items:
        raise ValueError("collate_visual: empty batch")
    if layout not in ("zyx", "xyz"):
        raise ValueError(f"collate_visual: layout must be 'zyx' or 'xyz', got {layout!r}")
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"collate_visual: input_layout must be one of {', '.join(INPUT_LAYOUTS)}, got {input_layout!r}")
    if layout == "zyx" and input_layout != "lps":
        raise ValueError(f"collate_visual: input_layout {input_layout!r} is a model order: it needs layout='xyz'")
    out = {"case_id": [it["case_id"] for it in items]}
    for key in ("global", "global_vit"):
        if items[0].get(key) is not None:
            out[key] = _cat([it[key][None] for it in items])
    for key in ("texture", "texture_vit", "geometry"):
        if items[0].get(key) is not None:
            out[key] = _cat([it[key] for it in items])
    out |= {
        "region_counts": torch.tensor([len(it["regions"]) for it in items], dtype=torch.long),
        "regions": torch.tensor([r for it in items for r in it["regions"]], dtype=torch.long),
        "region_texts": [list(it["region_texts"]) for it in items],
        "report": [it["report"] for it in items],
    }
    if layout == "xyz":
        for k in ("global", "texture", "geometry"):
            if k in out:
                out[k] = to_input_layout(out[k], input_layout)
    if tokenize is not None:
        extra = tokenize(items)
        clash = set(extra) & set(out)
        if clash:
            raise ValueError(f"collate_visual: tokenize returned keys that clash with the visual batch: {sorted(clash)}")
        out.update(extra)
    return out


def pad_to_longest(seqs: Sequence[Sequence[int] | torch.Tensor], pad_value: int,
                   side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id sequences to the longest of the batch (never to a fixed 2048): (ids [B, L], mask [B, L])."""
    if side not in ("right", "left"):
        raise ValueError(f"pad_to_longest: side must be 'right' or 'left', got {side!r}")
    tensors = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    length = max((t.numel() for t in tensors), default=0)
    ids = torch.full((len(tensors), length), int(pad_value), dtype=torch.long)
    mask = torch.zeros((len(tensors), length), dtype=torch.long)
    for i, t in enumerate(tensors):
        n = t.numel()
        sl = slice(0, n) if side == "right" else slice(length - n, length)
        ids[i, sl] = t
        mask[i, sl] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------------------
# Batches (training, generation, benchmarks)
# --------------------------------------------------------------------------------------------------------------

def permute_regions(item: dict, order: Sequence[int]) -> dict:
    """A dataset item with its regions (and their inputs and texts) in `order` (positions into item["regions"])."""
    import torch

    order = [int(k) for k in order]
    idx = torch.as_tensor(order, dtype=torch.long)
    out = dict(item)
    out["regions"] = [int(item["regions"][k]) for k in order]
    out["region_texts"] = [item["region_texts"][k] for k in order]
    for key in ("texture", "texture_vit", "geometry"):
        if key in item and item[key] is not None:
            out[key] = item[key].index_select(0, idx)
    return out


def shuffle_regions(item: dict, rng) -> dict:
    """The item with its regions in a random order drawn from `rng` (a numpy Generator)."""
    return permute_regions(item, rng.permutation(len(item["regions"])))


def tokenize_items(items: list[dict], tokenizer, config, *, with_target: bool, padding_side: str) -> dict:
    """Prompts (and RRA targets) for items whose regions are already in prompt order: input_ids,
    attention_mask, labels padded to the longest sample, and the area names in prompt order."""
    from reg2rg.rra import build_example, pad_examples

    examples = []
    for it in items:
        pairs = [(REGIONS[int(r)], t if t is not None else "") for r, t in zip(it["regions"], it["region_texts"])]
        examples.append(build_example(tokenizer, pairs, config, None, with_target=with_target))
    batch = pad_examples(examples, tokenizer.pad_token_id, padding_side=padding_side)
    batch["areas"] = [e.areas for e in examples]
    batch["target"] = [e.target for e in examples]
    return batch


def make_batch(items: list[dict], tokenizer, config, *, rng=None, with_target: bool = True,
               padding_side: str = "right") -> dict:
    """Items -> one model batch: regions shuffled with `rng` (None: kept in the items' order), prompts padded to
    the longest sample, visual inputs concatenated region by region in prompt order, spatial axes [X, Y, Z] in
    the voxel order of `config.input_layout`.

    Keys: everything of `collate_visual` (global, texture, geometry, region_counts, regions, ...)
    plus input_ids, attention_mask, labels, areas, target. `model_inputs` picks the model's arguments."""

    for it in items:
        if not len(it["regions"]):
            raise InputError(it.get("case_id", "?"), "a sample without regions reached the batch (the dataset must "
                             "leave scans without a usable region out)")
    if rng is not None:
        items = [shuffle_regions(it, rng) for it in items]

    def tokenize(its):
        return tokenize_items(its, tokenizer, config, with_target=with_target, padding_side=padding_side)

    return collate_visual(items, tokenize=tokenize, layout="xyz", input_layout=config.input_layout)


def model_inputs(batch: dict, device, *, labels: bool = True, dtype=None) -> dict:
    """The Reg2RGModel arguments of a `make_batch` batch, on `device`."""
    vol = dict(device=device, dtype=dtype) if dtype is not None else dict(device=device)
    out = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "region_masks": batch["geometry"].to(**vol),
        "region_counts": batch["region_counts"].to(device),
    }
    for key, arg in (("global", "global_volume"), ("texture", "region_crops"), ("global_vit", "global_vit"),
                     ("texture_vit", "texture_vit")):
        if batch.get(key) is not None:
            out[arg] = batch[key].to(device) if key.endswith("_vit") else batch[key].to(**vol)
    if labels:
        out["labels"] = batch["labels"].to(device)
    return out


class TrainCollate:
    """collate_fn of the training DataLoader (picklable for workers): region order from (seed, m, rank)."""

    def __init__(self, tokenizer, config, seed: int, rank: int):
        self.tokenizer, self.config, self.seed, self.rank = tokenizer, config, seed, rank

    def __call__(self, keyed: list[tuple[int, dict]]) -> dict:
        import numpy as np

        m = keyed[0][0]
        rng = np.random.default_rng([self.seed, m, self.rank, 1])
        batch = make_batch([it for _, it in keyed], self.tokenizer, self.config, rng=rng)
        batch["micro_batch"] = m
        return batch
