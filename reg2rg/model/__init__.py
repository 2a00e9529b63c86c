"""The Reg2RG model: config, visual encoders, prompt merging into the LLM, building, saving and loading.

Entry points: `load_preset` / `config_from_preset` -> `Reg2RGConfig`; `load_tokenizer` or `train_tiny_tokenizer`;
`build_model(config, tokenizer)`; `save_trained(model, out_dir)` / `load_trained(out_dir)`. The prompt side
(`build_example`, `pad_examples`, the special tokens) lives in `reg2rg.rra`.

The names are imported on first use (PEP 562): `reg2rg.model.config`, which the workflow's config check reads at
every Snakefile parse (each SLURM job's too), then does not pull in torch and transformers (about 2 s).
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Reg2RGConfig": "config",
    "config_from_preset": "config",
    "load_preset": "config",
    "Reg2RGModel": "modeling",
    "build_model": "build",
    "load_trained": "build",
    "save_trained": "build",
    "load_tokenizer": "tokenizer",
    "train_tiny_tokenizer": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
