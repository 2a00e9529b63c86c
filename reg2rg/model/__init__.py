"""The Reg2RG model: config, visual encoders, prompt merging into the LLM, building, saving and loading.

Entry points: `load_preset` / `config_from_preset` -> `Reg2RGConfig`; `load_tokenizer` or `train_tiny_tokenizer`;
`build_model(config, tokenizer)`; `save_trained(model, out_dir)` / `load_trained(out_dir)`. The prompt side
(`build_example`, `pad_examples`, the special tokens) lives in `reg2rg.rra`.
"""
from reg2rg.model.build import build_model, load_trained, save_trained
from reg2rg.model.config import Reg2RGConfig, config_from_preset, load_preset
from reg2rg.model.modeling import Reg2RGModel
from reg2rg.model.tokenizer import load_tokenizer, train_tiny_tokenizer

__all__ = [
    "Reg2RGConfig",
    "Reg2RGModel",
    "build_model",
    "config_from_preset",
    "load_preset",
    "load_tokenizer",
    "load_trained",
    "save_trained",
    "train_tiny_tokenizer",
]
