"""`reg2rg check-weights CONFIG`: check a user's pretrained files against what the model code builds, before a
job is submitted.

For the model preset a data set trains with (config/config.yaml: `presets.<name>`), every file the preset names
is read for its tensor names and shapes only, and compared with the modules the code builds for that config on
the meta device (no memory for the weights, nothing computed):
- `llm.path`: a Hugging Face folder (config.json, *.safetensors or pytorch_model*.bin), against
  AutoModelForCausalLM.from_config of its own config.json; its tokenizer (or `tokenizer_path`'s) must load and
  fit the embedding table;
- `vision_checkpoint` (RadFM_vit3d.pth), through RadFM's ViT key map, against our ViT3D;
- `perceiver_checkpoint` (RadFM_perceiver_fc.pth), its "perceiver" part against our PerceiverResampler (and
  "fc" when `load_radfm_fc`);
- with `evaluation.labeler: radbert`: `evaluation.radbert_checkpoint` (RadBertClassifier.pth) against a
  RobertaModel of `evaluation.radbert_dir`'s config.json plus the 18-label head.
Every problem names its file and the missing, unexpected or mismatched keys (docs/paper.md lists the files).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from reg2rg.errors import ConfigError, InputError
from reg2rg.model.radfm import shape_problems

log = logging.getLogger(__name__)


@dataclass
class FileCheck:
    what: str
    path: str | None
    problems: list[str] = field(default_factory=list)
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _problem(err: InputError, path) -> str:
    """The error's text without its file name when that is the file the check names already."""
    return err.problem if err.path == str(path) else str(err)


def _read(check: FileCheck, reader, *args):
    """reader(*args), or None with the InputError it raised added to the check's problems."""
    try:
        return reader(*args)
    except InputError as err:
        check.problems.append(_problem(err, check.path))
        return None


# -- the LLM folder ----------------------------------------------------------------------------------------------
def _folder_shapes(folder: Path) -> dict[str, tuple]:
    """Tensor name -> shape of every weight file of a Hugging Face folder, read from the file headers."""
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, tuple] = {}
    if files:
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for k in sf.keys():
                        shapes[k] = tuple(sf.get_slice(k).get_shape())
            except Exception as err:  # safetensors raises its own error types
                raise InputError(f, f"cannot read as safetensors: {err}") from err
        return shapes
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise InputError(folder, "no weight files (*.safetensors or pytorch_model*.bin)")
    for f in files:
        try:
            state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types
            raise InputError(f, f"cannot read as a PyTorch checkpoint: {err}") from err
        shapes.update({k: tuple(v.shape) for k, v in state.items()})
    return shapes


def check_llm(config, folder) -> FileCheck:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    check = FileCheck("LLM (llm.path)", str(folder))
    if not (folder / "config.json").is_file():
        check.problems.append("not a Hugging Face model folder (no config.json)")
        return check
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        check.problems.append(f"config.json: {err}")
        return check
    if hf_config.model_type != config.llm.arch:
        check.problems.append(f"config.json: a {hf_config.model_type!r} model, the preset says llm.arch="
                              f"{config.llm.arch!r}")
        return check
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = set()
    if getattr(hf_config, "tie_word_embeddings", False) or getattr(hf_config.get_text_config(), "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        optional |= {k for k, v in model.state_dict().items() if out is not None and v is out.weight}
    found = _read(check, _folder_shapes, folder)
    if found is None:
        return check
    check.tensors = len(found)
    check.problems += shape_problems(expected, found, optional=optional)
    return check


def check_tokenizer(folder, llm_folder=None) -> FileCheck:
    """The tokenizer loads (with the prompt's special tokens) and fits the embedding table of `llm_folder`."""
    from reg2rg.model.tokenizer import load_tokenizer, text_vocab_size

    check = FileCheck("tokenizer", str(folder))
    try:
        tok = load_tokenizer(folder)
    except ConfigError as err:
        check.problems.append(str(err))
        return check
    if llm_folder is not None and (Path(llm_folder) / "config.json").is_file():
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(str(llm_folder), local_files_only=True).get_text_config().vocab_size
        if text_vocab_size(tok) > vocab:
            check.problems.append(f"its text vocabulary ({text_vocab_size(tok)}) exceeds the LLM's embedding table "
                                  f"({vocab})")
    return check


# -- RadFM's files -------------------------------------------------------------------------------------------
def _meta_visual(config):
    import torch
    from torch import nn

    from reg2rg.model.perceiver import PerceiverResampler
    from reg2rg.model.vit3d import ViT3D

    with torch.device("meta"):
        vit = ViT3D(config.vit, config.input_size)
        perceiver = PerceiverResampler(config.vit.dim, config.perceiver)
        fc = nn.Linear(config.vit.dim, 5120)  # RadFM's fc: its 13B LLM's width
    return vit, perceiver, fc


def check_radfm_vit(config, path) -> FileCheck:
    from reg2rg.model.radfm import mapping_problems, vit_key_map, vit_state

    check = FileCheck("RadFM ViT (vision_checkpoint)", str(path))
    vit, _, _ = _meta_visual(config)
    state = _read(check, vit_state, path)
    if state is None:
        return check
    check.tensors = len(state)
    problem = mapping_problems(vit.state_dict(), state, vit_key_map(len(vit.blocks)), "ViT")
    if problem:
        check.problems.append(problem)
    return check


def check_radfm_perceiver(config, path) -> FileCheck:
    from reg2rg.model.radfm import FC_KEY_MAP, mapping_problems, perceiver_key_map, perceiver_state

    check = FileCheck("RadFM Perceiver (perceiver_checkpoint)", str(path))
    _, perceiver, fc = _meta_visual(config)
    read = _read(check, perceiver_state, path)
    if read is None:
        return check
    sub, fc_state = read
    check.tensors = len(sub) + len(fc_state or {})
    problem = mapping_problems(perceiver.state_dict(), sub, perceiver_key_map(len(perceiver.layers)), "Perceiver")
    if problem:
        check.problems.append(problem)
    if config.load_radfm_fc:
        if fc_state is None:
            check.problems.append("load_radfm_fc is set but the file holds no 'fc' state dict")
        else:
            problem = mapping_problems(fc.state_dict(), fc_state, FC_KEY_MAP, "fc")
            if problem:
                check.problems.append(problem)
    return check


# -- RadBERT ---------------------------------------------------------------------------------------------------
def check_radbert(checkpoint, model_dir) -> list[FileCheck]:
    import torch
    from transformers import AutoConfig, RobertaModel

    from reg2rg.evaluate.labelers import LABELS, RadBertLabeler

    folder = FileCheck("RadBERT folder (evaluation.radbert_dir)", str(model_dir) if model_dir else None)
    ckpt = FileCheck("RadBERT classifier (evaluation.radbert_checkpoint)", str(checkpoint) if checkpoint else None)
    if not model_dir or not Path(model_dir).is_dir():
        folder.problems.append("not set" if not model_dir else "folder not found")
        return [folder, ckpt]
    try:
        rb_config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        folder.problems.append(f"cannot load the RoBERTa config or tokenizer: {err}")
        return [folder, ckpt]
    if not checkpoint or not Path(checkpoint).is_file():
        ckpt.problems.append("not set" if not checkpoint else "file not found")
        return [folder, ckpt]
    with torch.device("meta"):
        encoder = RobertaModel(rb_config, add_pooling_layer=True)
    expected = {f"model.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    expected.update({"classifier.weight": (len(LABELS), rb_config.hidden_size), "classifier.bias": (len(LABELS),)})
    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - unreadable or not a state dict
        ckpt.problems.append(f"cannot read as a PyTorch state dict: {err}")
        return [folder, ckpt]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    found = {(k[len("module."):] if k.startswith("module.") else k): tuple(v.shape) for k, v in state.items()}
    for k in RadBertLabeler.IGNORED_KEYS:
        found.pop(k, None)
    ckpt.tensors = len(found)
    ckpt.problems += shape_problems(expected, found, optional={"model.embeddings.position_ids"})
    return [folder, ckpt]


# -- the command ------------------------------------------------------------------------------------------------
def _preset_config(data: dict, preset: str | None, dataset: str | None, config_path: Path):
    from reg2rg.model.config import config_from_preset

    datasets = data.get("datasets") or {}
    if preset is None:
        name = dataset or data.get("default_dataset")
        if name not in datasets:
            raise ConfigError(f"{config_path}: no data set {name!r}; data sets: {', '.join(sorted(datasets))}")
        preset = datasets[name].get("model_preset", "paper")
    presets = data.get("presets") or {}
    if preset not in presets:
        raise ConfigError(f"{config_path}: no preset {preset!r}; presets: {', '.join(sorted(presets))}")
    return preset, config_from_preset(presets[preset])


def check_weights(config_path, *, preset: str | None = None, dataset: str | None = None,
                  base_dir=None) -> list[FileCheck]:
    """Every file check for the preset (see the module docstring). Relative paths are read from `base_dir`
    (default: the working directory, where the workflow runs)."""
    import yaml

    config_path = Path(config_path)
    try:
        data = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{config_path}: cannot read: {err}") from err
    name, config = _preset_config(data, preset, dataset, config_path)
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def resolve(p):
        return None if p is None else (Path(p) if Path(p).is_absolute() else base / p)

    checks = []
    if config.llm.path is not None:
        llm = resolve(config.llm.path)
        checks.append(check_llm(config, llm))
        if checks[-1].ok or config.tokenizer_path:
            checks.append(check_tokenizer(resolve(config.tokenizer_path or config.llm.path), llm))
    if config.vision_checkpoint:
        checks.append(check_radfm_vit(config, resolve(config.vision_checkpoint)))
    if config.perceiver_checkpoint:
        checks.append(check_radfm_perceiver(config, resolve(config.perceiver_checkpoint)))
    evaluation = data.get("evaluation") or {}
    if evaluation.get("labeler") == "radbert":
        checks += check_radbert(resolve(evaluation.get("radbert_checkpoint")), resolve(evaluation.get("radbert_dir")))
    if not checks:
        log.info("preset %s names no pretrained file (random init): nothing to check", name)
    return checks


def cli(args: argparse.Namespace) -> int:
    """`reg2rg check-weights CONFIG [--preset NAME | --dataset NAME]`: exit 0 when every file fits, else 1."""
    checks = check_weights(args.config, preset=args.preset, dataset=args.dataset)
    for c in checks:
        if c.ok:
            log.info("ok: %s %s (%d tensors)", c.what, c.path, c.tensors)
        else:
            for problem in c.problems:
                log.error("%s: %s: %s", c.what, c.path, problem)
    bad = [c for c in checks if not c.ok]
    if bad:
        log.error("%d of %d weight files do not fit the model code (see above)", len(bad), len(checks))
        return 1
    print(json.dumps([{"what": c.what, "path": c.path, "tensors": c.tensors} for c in checks], indent=2))
    return 0
