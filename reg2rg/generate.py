"""Report generation: `reg2rg generate --model DIR --manifest FILE --out predictions.parquet`.

Every included scan of the manifest is read from the cache stage's files (`reg2rg.dataset.Reg2RGDataset`, test
mode: every region whose mask has a voxel in the body, with or without a text), prompted with its regions in
REGIONS order (or a seeded random order per scan with `shuffle_regions`), and decoded in batches: prompts
left-padded, the KV cache on. Decoding is exactly the settings given (`GenerationSettings`, greedy by
default); nothing is read from a generation_config.json beside the LLM. `decoding:` names a preset of decoding
settings (DECODING_PRESETS: `greedy`, the default, and `authors`, the Reg2RG authors' sampling) that the other
keys given beside it override. Sampling is seeded (`seed`, recorded in `decoding` with the preset's name), so a
sampled run repeats on the same machine and software.

Output (Parquet, one row per scan):
    case_id          str
    reference        the reference report: in RRA form ("The region {i} is {area}: {text} ...") built from
                     the scan's region texts in the prompt's region order, regions without a text left out
                     (their index stays unused); the whole report when the scan has no region text at all;
                     plain region texts in prompt order for a model trained without RRA
    prediction       the generated text, raw (special tokens removed)
    regions          the prediction parsed with reg2rg.rra.parse_rra: list of {index, named_area, text}
    region_areas     the true area of each prompt region, by index (position 0 = region 1), for recognition
    n_regions, prompt_tokens, generated_tokens (up to and including eos), finished (eos reached before
    max_new_tokens)
    dataset, model_preset, config_digest, model, decoding (JSON of the decoding settings)
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError, InputError
from reg2rg.files import atomic_path

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "reference", "prediction", "regions", "region_areas", "n_regions", "prompt_tokens",
           "generated_tokens", "finished", "dataset", "model_preset", "config_digest", "model", "decoding")
# Settings that are not decoding parameters (they do not change a greedy output).
_NOT_DECODING = ("batch_size", "num_workers", "resources")

# Named decoding settings (`generation.decoding`, `--decoding`). `greedy` is the default: the argmax at every
# step, the same text on every run. `authors`: what the Reg2RG authors' test script did, sampling with
# temperature 0.6 and top-p 0.9 (the values of Llama-2-7b-chat-hf's generation_config.json, which their
# `generate` call inherited), top-k 30 and at most 500 new tokens; for reproducing their numbers. Sampled text
# depends on `seed`.
DECODING_PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
               "max_new_tokens": 512},
    "authors": {"do_sample": True, "num_beams": 1, "temperature": 0.6, "top_k": 30, "top_p": 0.9,
                "max_new_tokens": 500},
}


@dataclass
class GenerationSettings:
    """The `generation:` section of config/config.yaml. Build it with `from_dict` to apply a `decoding` preset;
    the dataclass defaults are the `greedy` preset's."""

    decoding_preset: str = "greedy"  # the name given as `decoding:` (DECODING_PRESETS), recorded
    batch_size: int = 4
    max_new_tokens: int = 512
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0
    shuffle_regions: bool = False
    num_workers: int = 0
    resources: dict[str, Any] = field(default_factory=dict)  # read by the workflow

    def __post_init__(self):
        if self.decoding_preset not in DECODING_PRESETS:
            raise ConfigError(f"generation.decoding: {self.decoding_preset!r} is not one of "
                              f"{', '.join(DECODING_PRESETS)}")
        for name in ("batch_size", "max_new_tokens", "num_beams"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"generation.{name}: must be at least 1, got {getattr(self, name)!r}")
        if self.temperature <= 0:
            raise ConfigError(f"generation.temperature: must be positive, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p: must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ConfigError("generation: top_k must be >= 0 and repetition_penalty > 0")

    def decoding(self) -> dict[str, Any]:
        """The settings that decide the text (recorded with every prediction)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_DECODING}

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of Reg2RGModel.generate."""
        return {k: getattr(self, k) for k in ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p",
                                              "top_k", "repetition_penalty", "length_penalty",
                                              "no_repeat_ngram_size")}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, **overrides) -> "GenerationSettings":
        """Settings from a `generation:` mapping and overrides (None: unset). `decoding` (in either) names a
        preset whose values come first; every other key given, in the mapping or the overrides, overrides it."""
        data = {**dict(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        preset = data.pop("decoding", None) or "greedy"
        if preset not in DECODING_PRESETS:
            raise ConfigError(f"generation.decoding: {preset!r} is not one of {', '.join(DECODING_PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"decoding_preset"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"generation: unknown key(s) {', '.join(unknown)}; known: decoding, "
                              f"{', '.join(sorted(names))}")
        return cls(**{**DECODING_PRESETS[preset], **data, "decoding_preset": preset})


def reference_text(item: dict, config) -> str:
    """The reference of one scan whose regions are in prompt order (see the module docstring)."""
    from reg2rg.rra import build_rra_target

    texts = [(k + 1, REGIONS[int(r)], str(t).strip()) for k, (r, t) in
             enumerate(zip(item["regions"], item["region_texts"])) if t is not None and str(t).strip()]
    if not texts:
        return str(item.get("report") or "").strip()
    if not config.use_rra:
        return " ".join(t for _, _, t in texts)
    return build_rra_target(texts).strip()


def _order_item(item: dict, settings: GenerationSettings, position: int) -> dict:
    """The scan's regions in REGIONS order, or a random order from (seed, position in the manifest)."""
    import numpy as np

    from reg2rg.dataset import permute_regions

    order = sorted(range(len(item["regions"])), key=lambda k: int(item["regions"][k]))
    if settings.shuffle_regions:
        rng = np.random.default_rng([settings.seed, position, 2])
        order = [order[k] for k in rng.permutation(len(order))]
    return permute_regions(item, order)


class _WithIndex:
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return i, self.dataset[i]


def _as_list(batch):
    return list(batch)


def generate_predictions(model, dataset, settings: GenerationSettings, *, device=None, meta: dict | None = None,
                         progress: bool = True):
    """Generate a report for every item of `dataset` (reg2rg.dataset.Reg2RGDataset items): a pandas DataFrame with
    the columns of the module docstring."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from reg2rg.rra import parse_rra
    from reg2rg.dataset import make_batch, model_inputs

    tokenizer = model.tokenizer
    config = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    meta = dict(meta or {})
    decoding = json.dumps(settings.decoding(), sort_keys=True)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    loader = torch.utils.data.DataLoader(_WithIndex(dataset), batch_size=settings.batch_size, shuffle=False,
                                         collate_fn=_as_list, num_workers=settings.num_workers)
    rows = []
    with tqdm(total=len(dataset), desc="generate", unit="scan", disable=not progress, mininterval=1.0) as bar:
        for chunk in loader:
            items = [_order_item(it, settings, i) for i, it in chunk]
            batch = make_batch(items, tokenizer, config, rng=None, with_target=False, padding_side="left")
            new = model.generate(**model_inputs(batch, device, labels=False), **settings.generate_kwargs(),
                                 eos_token_id=eos, pad_token_id=pad).cpu()
            for b, it in enumerate(items):
                ids = new[b].tolist()
                finished = eos in ids
                n_gen = ids.index(eos) + 1 if finished else len([t for t in ids if t != pad])
                text = tokenizer.decode(ids[:n_gen], skip_special_tokens=True).strip()
                rows.append({
                    "case_id": it["case_id"],
                    "reference": reference_text(it, config),
                    "prediction": text,
                    "regions": [{"index": p.index, "named_area": p.area, "text": p.text} for p in parse_rra(text)],
                    "region_areas": [REGIONS[int(r)] for r in it["regions"]],
                    "n_regions": len(it["regions"]),
                    "prompt_tokens": int(batch["attention_mask"][b].sum()),
                    "generated_tokens": n_gen,
                    "finished": finished,
                    "dataset": meta.get("dataset"),
                    "model_preset": meta.get("model_preset"),
                    "config_digest": meta.get("config_digest"),
                    "model": meta.get("model"),
                    "decoding": decoding,
                })
            bar.update(len(items))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _run_config(model_dir: Path) -> dict:
    from reg2rg.constants import RUN_CONFIG_FILE

    path = model_dir / RUN_CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def generate(model_dir, manifest, out, *, cache=None, settings: GenerationSettings | None = None, device=None,
             dataset_name: str | None = None, limit: int | None = None) -> Path:
    """Load the trained model in `model_dir`, generate for the included scans of `manifest` (their cache in
    `cache`, default: the `cache/` folder beside the manifest's folder) and write the predictions Parquet."""
    import torch

    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.manifest import read_manifest
    from reg2rg.model import load_trained

    settings = settings or GenerationSettings()
    model_dir, out = Path(model_dir), Path(out)
    cache_dir = Path(cache) if cache is not None else Path(manifest).resolve().parent.parent / "cache"
    if cache_dir.suffix == ".parquet":
        cache_dir = cache_dir.parent
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained(model_dir, device=device)
    run = _run_config(model_dir)
    dataset = Reg2RGDataset(read_manifest(manifest), cache_dir, model.config.input_size, split=None, text=False,
                            lfd=model.config.use_lfd)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise InputError(manifest, "no included scan with a usable region to generate for")
    log.info("generating for %d scans of %s with %s on %s", len(dataset), manifest, settings.decoding(), device)
    meta = {"dataset": dataset_name or run.get("dataset"), "model_preset": run.get("preset"),
            "config_digest": run.get("config_digest"), "model": str(model_dir)}
    df = generate_predictions(model, dataset, settings, device=device, meta=meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
    done = int(df["finished"].sum())
    log.info("wrote %s: %d scans, %d ended with eos, %d stopped at max_new_tokens", out, len(df), done, len(df) - done)
    return out


def cli(args) -> int:
    """`reg2rg generate` (arguments: reg2rg.cli._add_generate)."""
    overrides = {k: getattr(args, k, None) for k in ("decoding", "batch_size", "max_new_tokens", "do_sample", "num_beams",
                                                     "temperature", "top_k", "top_p", "repetition_penalty",
                                                     "seed", "shuffle_regions", "num_workers")}
    settings = GenerationSettings.from_dict(None, **overrides)
    generate(args.model, args.manifest, args.out, cache=args.cache, settings=settings, device=args.device,
             dataset_name=args.dataset, limit=args.limit)
    return 0
