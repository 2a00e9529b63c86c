"""Tiny random models and inputs that several test modules build: the tiny preset shrunk to test size, synthetic
scans whose regions a model can only tell apart by their visual tokens, a tokenizer, a small model trained to
name them (shared by the workers of one test run), and tiny LLM / RadBERT checkpoints saved with
`save_pretrained` in the layouts a user's real ones have (loaded through the same code paths)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from reg2rg.constants import REGIONS
from reg2rg.model import load_preset, load_tokenizer, train_tiny_tokenizer
from reg2rg.model.tokenizer import text_vocab_size
from reg2rg.train import TrainingConfig, train

TEXT = "ok."  # every region's text: the targets differ only by their area names


def small_config(**overrides):
    """The tiny preset shrunk to test size (same code path)."""
    return load_preset("tiny", **{
        "input_size": [32, 32, 8],
        "vit": {"patch_size": [16, 16, 4]},
        "mask_encoder": {"patch_size": [16, 16, 8]},
        "perceiver": {"num_latents": 4},
        "llm": {"sizes": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 4, "intermediate_size": 128, "max_position_embeddings": 1024}},
        **overrides,
    })


class SynthDataset(torch.utils.data.Dataset):
    """Items like reg2rg.dataset.Reg2RGDataset's ([.., Z, Y, X], regions ascending). Region r has a fixed random
    texture (plus per-scan noise) and a box mask at its own place; the global input is the same for every scan."""

    def __init__(self, n, input_size, seed=0, min_regions=2, max_regions=3, text=TEXT):
        x, y, z = input_size
        rng = np.random.default_rng(seed)
        self.items = []
        for s in range(n):
            k = int(rng.integers(min_regions, max_regions + 1))
            regions = sorted(int(r) for r in rng.choice(len(REGIONS), size=k, replace=False))
            tex, geo = [], []
            for r in regions:
                base = np.random.default_rng(100 + r).normal(0, 0.5, (1, z, y, x))
                tex.append(torch.from_numpy((base + rng.normal(0, 0.1, (1, z, y, x))).astype(np.float32)))
                m = np.zeros((1, z, y, x), np.float32)
                x0, y0 = (r % 5) * (x // 5), (r // 5) * (y // 2)
                m[:, :, y0:y0 + y // 2, x0:x0 + x // 5] = 1
                geo.append(torch.from_numpy(m))
            self.items.append({"case_id": f"case_{s}", "global": torch.zeros((1, z, y, x)),
                               "texture": torch.stack(tex), "geometry": torch.stack(geo), "regions": regions,
                               "region_texts": [text] * k, "report": f"report {s}"})
        self.samples = [{"case_id": it["case_id"]} for it in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def make_tokenizer(folder):
    texts = [f"The region {i} is {a}: {TEXT}" for i in range(1, 11) for a in REGIONS]
    train_tiny_tokenizer(texts * 3, 400, folder)
    return load_tokenizer(folder)


def recognition(df) -> tuple[int, int]:
    """(regions named with their true area, regions) of a predictions table."""
    ok = total = 0
    for regions, areas in zip(df["regions"], df["region_areas"]):
        named = {int(p["index"]): p["named_area"] for p in regions}
        for i, area in enumerate(areas):
            total += 1
            ok += named.get(i + 1) == area
    return ok, total


# 400 steps named 29 of 30 regions of the 12 scans (transformers 5.24, torch 2.13): 600 name all 30.
OVERFIT_STEPS = 600


def overfit_model(tmp_path_factory) -> tuple[Path, SynthDataset]:
    """A tiny model trained (once per test run) on 12 synthetic scans of 2-3 regions in a new order at every step.
    Under xdist the workers share it: the first to ask trains it in the run's common temporary folder while the
    other waits on a file lock (tests/test_generate.py uses it too, often on the other worker)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above the workers' own (popen-gw0, popen-gw1)
    base = root / "overfit"
    cfg = small_config(lora={"dropout": 0.0})
    dataset = SynthDataset(12, cfg.input_size, seed=1)
    with FileLock(str(root / "overfit.lock")):
        if not (base / "model" / "run_config.json").is_file():
            tokenizer = make_tokenizer(base / "tokenizer")
            training = TrainingConfig(max_steps=OVERFIT_STEPS, per_device_batch_size=4, effective_batch_size=4,
                                      learning_rate=1e-3, warmup_steps=10, mixed_precision="no", seed=0,
                                      checkpoint_every=OVERFIT_STEPS, log_every=50, num_workers=0)
            train(cfg, training, dataset=dataset, tokenizer=tokenizer, work_dir=base / "work",
                  out_dir=base / "model", run_info={"dataset": "synthetic", "preset": "tiny"})
    return base / "model", dataset


SMALL_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
               "intermediate_size": 64, "max_position_embeddings": 1024}
# The paper preset's encoders shrunk to test size (same code path: RadFM layout, 3 channels, frozen ViT).
PAPER_SMALL = dict(
    input_size=[32, 32, 8],
    vit={"patch_size": [16, 16, 4], "dim": 24, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32,
         "pos_grid": [4, 4, 8]},
    perceiver={"depth": 2, "num_latents": 4, "heads": 2, "dim_head": 8, "ff_mult": 2},
    mask_encoder={"patch_size": [16, 16, 8], "dim": 12, "depth": 3, "heads": 2, "dim_head": 6, "mlp_dim": 16},
)


def save_tiny_llm(arch, tok, folder, sampling_config=True):
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    ids = dict(vocab_size=text_vocab_size(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "llama":
        llm = LlamaForCausalLM(LlamaConfig(**SMALL_LLAMA, **ids))
    else:
        llm = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024, **ids))
    llm.save_pretrained(folder)
    tok.save_pretrained(folder)
    if sampling_config:  # like Llama-2-chat's: must never leak into our decoding
        GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, top_k=5, max_new_tokens=3,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(folder)
    return llm


def save_tiny_radbert(d: Path, corpus) -> tuple:
    """A tiny random RoBERTa saved with save_pretrained in `d`, a byte-level BPE tokenizer trained there on
    `corpus`, and a state dict in RadBertClassifier.pth's key layout (model.* + classifier.*, with the
    position_ids buffer older transformers saved). Returns (d, the .pth file, tokenizer, encoder, head)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    d.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus) * 3, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(d))
    # A folder as RadBERT-RoBERTa-4m's: vocab.json and merges.txt, read through AutoTokenizer (the labeler's way,
    # and one that works from the transformers floor up; RobertaTokenizerFast(vocab_file, merges_file) does not).
    (d / "tokenizer_config.json").write_text('{"tokenizer_class": "RobertaTokenizer"}')
    tok = AutoTokenizer.from_pretrained(str(d))
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    enc = RobertaModel(cfg, add_pooling_layer=True).eval()
    enc.save_pretrained(str(d))
    head = torch.nn.Linear(32, 18)
    state = {f"model.{k}": v for k, v in enc.state_dict().items()}
    state["model.embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    state.update({f"classifier.{k}": v for k, v in head.state_dict().items()})
    ckpt = d / "RadBertClassifier.pth"
    torch.save(state, ckpt)
    return d, ckpt, tok, enc, head
