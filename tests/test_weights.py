"""`reg2rg check-weights`: a user's pretrained files against the modules the code builds (meta device), with tiny
random weights saved here in the real files' layouts; tampered files fail with the file and the key named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from reg2rg.weights import check_weights
from radfm_reference import write_radfm_files
from tiny_models import PAPER_SMALL, save_tiny_llm, save_tiny_radbert

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer_and_radbert(tmp_path_factory):
    """Built once per module (the tests tamper with copies only): a tiny tokenizer and a tiny RadBERT."""
    from reg2rg.model import load_tokenizer, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("weights")
    train_tiny_tokenizer(["No pleural effusion.", "Heart size is normal."] * 5, 320, root / "tokenizer")
    radbert_dir, radbert_ckpt, *_ = save_tiny_radbert(root / "radbert", ["No pleural effusion.", "Emphysema."])
    return load_tokenizer(root / "tokenizer"), radbert_dir, radbert_ckpt


@pytest.fixture()
def weights(tmp_path, tokenizer_and_radbert):
    """A config naming tiny random files in every layout check-weights reads (paths relative to tmp_path)."""
    from reg2rg.model import load_preset

    tok, radbert_dir, radbert_ckpt = tokenizer_and_radbert
    save_tiny_llm("llama", tok, tmp_path / "models" / "llm")
    (tmp_path / "models" / "RadFM").mkdir()
    write_radfm_files(load_preset("paper", **PAPER_SMALL), tmp_path / "models" / "RadFM")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["presets"]["paper"].update(PAPER_SMALL)
    config["presets"]["paper"]["llm"]["path"] = "models/llm"
    config["presets"]["paper"]["llm"]["dtype"] = "float32"
    config["evaluation"].update(labeler="radbert", radbert_checkpoint=str(radbert_ckpt), radbert_dir=str(radbert_dir))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _problems(checks):
    return {c.what: c.problems for c in checks if c.problems}


def test_check_weights_passes_on_matching_files_and_names_tampered_keys(weights, tmp_path):
    checks = check_weights(weights, dataset="radgenome", base_dir=tmp_path)
    assert [c.what.split(" (")[0] for c in checks] == ["LLM", "tokenizer", "RadFM ViT", "RadFM Perceiver",
                                                       "RadBERT folder", "RadBERT classifier"]
    assert _problems(checks) == {}
    assert all(c.tensors > 0 for c in checks if c.what.startswith(("LLM", "RadFM", "RadBERT classifier")))

    # A renamed ViT key: the file and both names.
    vit = tmp_path / "models" / "RadFM" / "RadFM_vit3d.pth"
    state = torch.load(vit)
    state["transformer.layers.0.0.fn.to_qkv_x.weight"] = state.pop("transformer.layers.0.0.fn.to_qkv.weight")
    torch.save(state, vit)
    # A Perceiver of another size: a shape mismatch.
    perc = tmp_path / "models" / "RadFM" / "RadFM_perceiver_fc.pth"
    state = torch.load(perc)
    state["perceiver"]["latents"] = state["perceiver"]["latents"][:2]
    torch.save(state, perc)
    # An LLM weight file with a layer's projection cut, and a classifier without its pooler.
    from safetensors.torch import load_file, save_file

    llm_file = tmp_path / "models" / "llm" / "model.safetensors"
    tensors = load_file(str(llm_file))
    tensors["model.layers.1.self_attn.q_proj.weight"] = tensors["model.layers.1.self_attn.q_proj.weight"][:16]
    del tensors["model.norm.weight"]
    save_file(tensors, str(llm_file), metadata={"format": "pt"})
    cfg = yaml.safe_load(weights.read_text())
    radbert = tmp_path / "RadBertClassifier.pth"
    state = torch.load(cfg["evaluation"]["radbert_checkpoint"])
    del state["model.pooler.dense.weight"]
    torch.save(state, radbert)
    cfg["evaluation"]["radbert_checkpoint"] = str(radbert)
    weights.write_text(yaml.safe_dump(cfg))

    problems = _problems(check_weights(weights, dataset="radgenome", base_dir=tmp_path))
    vit_msg = " ".join(problems["RadFM ViT (vision_checkpoint)"])
    assert "missing keys: transformer.layers.0.0.fn.to_qkv.weight" in vit_msg
    assert "unexpected keys: transformer.layers.0.0.fn.to_qkv_x.weight" in vit_msg
    assert "shape mismatches: latents (file (2, 24), model (4, 24))" in " ".join(
        problems["RadFM Perceiver (perceiver_checkpoint)"])
    llm_msg = " ".join(problems["LLM (llm.path)"])
    assert "missing keys: model.norm.weight" in llm_msg
    assert "model.layers.1.self_attn.q_proj.weight (file (16, 32), model (32, 32))" in llm_msg
    assert "missing keys: model.pooler.dense.weight" in " ".join(
        problems["RadBERT classifier (evaluation.radbert_checkpoint)"])

    # The command: exit 1, every problem logged with its file.
    r = subprocess.run([sys.executable, "-m", "reg2rg", "check-weights", str(weights), "--dataset", "radgenome"],
                       cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert r.returncode == 1, r.stderr
    assert str(Path("models/RadFM/RadFM_vit3d.pth")) in r.stderr and "to_qkv_x.weight" in r.stderr
    assert "4 of 5 weight files do not fit" in r.stderr  # the tokenizer is not checked against a broken LLM


def test_check_weights_missing_files_and_random_presets(tmp_path):
    problems = _problems(check_weights(REPO / "config" / "config.yaml", dataset="radgenome", base_dir=tmp_path))
    assert problems["LLM (llm.path)"] == ["not a Hugging Face model folder (no config.json)"]
    assert "RadFM checkpoint not found" in problems["RadFM ViT (vision_checkpoint)"][0]
    assert check_weights(REPO / "config" / "config.yaml", preset="tiny") == []  # random init: nothing to read


def test_check_weights_tokenizer_problem(weights, tmp_path):
    """A tokenizer folder that does not load is named (the LLM folder itself fits)."""
    cfg = yaml.safe_load(weights.read_text())
    cfg["presets"]["paper"]["tokenizer_path"] = "models/no_tokenizer"
    weights.write_text(yaml.safe_dump(cfg))
    problems = _problems(check_weights(weights, preset="paper", base_dir=tmp_path))
    assert list(problems) == ["tokenizer"] and "tokenizer folder not found" in problems["tokenizer"][0]
