"""Build a Reg2RGModel from a config and a tokenizer; save and load a trained one.

Trained model folder (`results/{dataset}/model/`):
  reg2rg_config.json    the resolved Reg2RGConfig (RadFM paths cleared: those weights are in modules.safetensors)
  adapter/              the LoRA adapter (peft save_pretrained; loads with PeftModel.from_pretrained)
  modules.safetensors   every weight outside the LLM: visual encoder (ViT, Perceiver, proj), mask encoder,
                        mask_proj, delimiter_embeddings
  tokenizer/            the tokenizer with the special tokens
  llm_base/             the base LLM, when it is not a pretrained folder left as loaded: a randomly
                        initialised one, or one trained with llm.train_base
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from reg2rg.errors import ConfigError, InputError
from reg2rg.model.config import Reg2RGConfig
from reg2rg.model.modeling import Reg2RGModel
from reg2rg.model.tokenizer import load_tokenizer, phrase_token_ids, special_token_ids, text_vocab_size

log = logging.getLogger(__name__)

CONFIG_FILE = "reg2rg_config.json"
MODULES_FILE = "modules.safetensors"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
LLM_BASE_DIR = "llm_base"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"llm.dtype: {name!r} is not a torch dtype")
    return dtype


def load_base_llm(config: Reg2RGConfig, tokenizer, path=None):
    """The frozen decoder: from a local folder (`path`, else config.llm.path), or randomly initialised from
    config.llm.sizes. Its generation_config is replaced by a neutral one (nothing inherited from the folder)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = path if path is not None else config.llm.path
    dtype = _dtype(config.llm.dtype)
    if path is not None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a Hugging Face model folder (no config.json)")
        llm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        if llm.config.model_type != config.llm.arch:
            raise ConfigError(f"{path}: holds a {llm.config.model_type!r} model, config says llm.arch={config.llm.arch!r}")
    else:
        common = dict(vocab_size=config.llm.vocab_size or text_vocab_size(tokenizer),
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        sizes = dict(config.llm.sizes)
        if config.llm.arch == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            llm = LlamaForCausalLM(LlamaConfig(**sizes, **common))
        else:
            from transformers import GPT2Config, GPT2LMHeadModel

            llm = GPT2LMHeadModel(GPT2Config(**sizes, **common))
        llm.to(dtype)
    if llm.config.pad_token_id is None:
        llm.config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                             pad_token_id=tokenizer.pad_token_id)
    llm.requires_grad_(False)
    return llm


def lora_config(config: Reg2RGConfig):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=config.lora.r, lora_alpha=config.lora.alpha,
                      lora_dropout=config.lora.dropout, target_modules=list(config.lora_targets),
                      fan_in_fan_out=config.llm.arch == "gpt2")  # GPT-2's Conv1D stores weights transposed


def _set_base_trainable(llm, config: Reg2RGConfig) -> None:
    if config.llm.train_base:
        for name, param in llm.named_parameters():
            if "lora_" not in name:
                param.requires_grad_(True)


def _load_radfm(model: Reg2RGModel, config: Reg2RGConfig) -> None:
    from reg2rg.model.radfm import load_radfm_perceiver, load_radfm_vit

    if model.visual is None:
        return
    if config.vision_checkpoint:
        load_radfm_vit(model.visual.vit, config.vision_checkpoint)
    elif config.freeze_vit:
        log.warning("freeze_vit is on but no vision_checkpoint is set: the ViT stays at its random init")
    if config.perceiver_checkpoint:
        load_radfm_perceiver(model.visual.perceiver, config.perceiver_checkpoint,
                             fc=model.visual.proj if config.load_radfm_fc else None)


def build_model(config: Reg2RGConfig, tokenizer, *, load_pretrained_vision: bool = True) -> Reg2RGModel:
    """A trainable model: LLM (folder or random) with fresh LoRA, RadFM weights where the config names them."""
    from peft import get_peft_model

    llm = get_peft_model(load_base_llm(config, tokenizer), lora_config(config))
    _set_base_trainable(llm, config)
    model = Reg2RGModel(config, llm, special_token_ids(tokenizer), text_vocab_size(tokenizer),
                        phrase_token_ids(tokenizer))
    if load_pretrained_vision:
        _load_radfm(model, config)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.tokenizer = tokenizer
    return model


def _save_base(model: Reg2RGModel, out: Path) -> None:
    """The base LLM (random init, or trained with llm.train_base) without the LoRA layers, as a plain Hugging
    Face folder."""
    base = model.llm.get_base_model()
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    fresh = type(base)(base.config)
    fresh.load_state_dict(state, strict=True)
    fresh.save_pretrained(str(out))


def save_trained(model: Reg2RGModel, out_dir) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(str(out / ADAPTER_DIR))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.trained_state_dict().items()}
    save_file(state, str(out / MODULES_FILE), metadata={"format": "pt"})
    data = model.config.to_dict()
    data.update(vision_checkpoint=None, perceiver_checkpoint=None, load_radfm_fc=False)
    if model.config.llm.path is None or model.config.llm.train_base:
        _save_base(model, out / LLM_BASE_DIR)
        data["llm"].update(path=LLM_BASE_DIR, sizes=None, vocab_size=None)
    Reg2RGConfig.from_dict(data).to_json(out / CONFIG_FILE)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    log.info("saved the trained model to %s", out)
    return out


def load_trained(out_dir, *, llm_path=None, is_trainable: bool = False, device=None) -> Reg2RGModel:
    """The model saved by save_trained (eval mode; `model.tokenizer` set).

    The base LLM comes from `llm_path`, else the folder's llm_base/, else the config's llm.path.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    out = Path(out_dir)
    config = Reg2RGConfig.from_json(out / CONFIG_FILE)
    tokenizer = load_tokenizer(out / TOKENIZER_DIR)
    if llm_path is None:
        llm_path = out / LLM_BASE_DIR if (out / LLM_BASE_DIR).is_dir() else config.llm.path
    llm = PeftModel.from_pretrained(load_base_llm(config, tokenizer, llm_path), str(out / ADAPTER_DIR),
                                    is_trainable=is_trainable)
    if is_trainable:
        _set_base_trainable(llm, config)
    model = Reg2RGModel(config, llm, special_token_ids(tokenizer), text_vocab_size(tokenizer),
                        phrase_token_ids(tokenizer))
    path = out / MODULES_FILE
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise InputError(path, f"cannot read: {err}") from err
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("llm.")]
    if missing or result.unexpected_keys:
        raise InputError(path, f"does not match the model of {CONFIG_FILE}: missing {missing}, "
                               f"unexpected {list(result.unexpected_keys)}")
    if is_trainable and config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.tokenizer = tokenizer
    if device is not None:
        model.to(device)
    return model.train(is_trainable) if is_trainable else model.eval()
