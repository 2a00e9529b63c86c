"""Training: settings, data order, batches, resuming, region tokens reaching the LLM, ZeRO-2 on two CPU processes.

The scans here are synthetic model inputs in the layout of `reg2rg.dataset.Reg2RGDataset` items; each region has
its own texture pattern and mask position, so a model can only name a region's area from its visual tokens.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError
from reg2rg.model import load_preset, load_trained
from reg2rg.rra import SPECIAL_TOKENS, TEXTURE_TOKEN, parse_rra
from reg2rg.dataset import make_batch
from reg2rg.checkpoints import latest_checkpoint
from reg2rg.train import (
    EpochPairing,
    StreamSampler,
    TrainingConfig,
    train,
    training_texts,
)
from tiny_models import SynthDataset, make_tokenizer, overfit_model, recognition, small_config

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


# --------------------------------------------------------------------------------------------------------------
# Settings, order, batches
# --------------------------------------------------------------------------------------------------------------

def test_training_settings_and_paper_preset():
    paper = TrainingConfig.from_dict(__import__("yaml").safe_load((REPO / "config/config.yaml").read_text())
                                     ["training"]["paper"])
    assert (paper.learning_rate, paper.warmup_steps, paper.lr_scheduler) == (5e-5, 20, "constant_with_warmup")
    assert (paper.mixed_precision, paper.gradient_checkpointing, paper.epochs) == ("bf16", True, 6)
    assert paper.effective_batch_size == 16
    assert [paper.gradient_accumulation(n) for n in (1, 2, 4, 8, 16)] == [16, 8, 4, 2, 1]
    with pytest.raises(ConfigError, match="multiple"):
        paper.gradient_accumulation(3)
    with pytest.raises(ConfigError, match="unknown key"):
        TrainingConfig.from_dict({"lr": 1e-4})
    with pytest.raises(ConfigError, match="lr_scheduler"):
        TrainingConfig(lr_scheduler="step")


def test_stream_sampler_epochs_processes_and_resume():
    full = list(StreamSampler(7, 2, 1, 0, seed=3, stop=12))
    per_epoch = 4  # ceil(7 / 2)
    for e in range(3):
        seen = [i for batch in full[e * per_epoch:(e + 1) * per_epoch] for _, i in batch]
        assert set(seen) == set(range(7)) and len(seen) == 8  # the last batch is filled from the epoch's start
    assert [m for m, _ in (b[0] for b in full)] == list(range(12))
    assert full[:per_epoch] != full[per_epoch:2 * per_epoch]  # a new order each epoch
    # A resumed stream continues exactly where it stopped.
    assert list(StreamSampler(7, 2, 1, 0, seed=3, start=5, stop=12)) == full[5:]
    # Two processes split each epoch; together they see what one process with twice the batch sees.
    ranks = [list(StreamSampler(7, 1, 2, r, seed=3, stop=8)) for r in (0, 1)]
    one = list(StreamSampler(7, 2, 1, 0, seed=3, stop=8))
    for m in range(8):
        assert [i for _, i in one[m]] == [ranks[0][m][0][1], ranks[1][m][0][1]]


def test_epoch_pairing_draws_another_scans_texts_anew_each_epoch():
    n, per_epoch = 6, 2
    texts = [[f"scan {j} region {r}" for r in range(len(REGIONS))] for j in range(n)]
    texts[1][4] = None  # scan 1 has no text for region 4: its receiver takes another scan's
    pairing = EpochPairing(texts, per_epoch, seed=5)
    donors = [pairing.donors(e) for e in range(4)]
    for d in donors:  # each epoch a derangement: every scan gives once and keeps none of its own
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
    assert len({tuple(d) for d in donors}) > 1 and pairing.donors(2) == EpochPairing(texts, 2, seed=5).donors(2)
    assert pairing.donors(0) != EpochPairing(texts, 2, seed=6).donors(0)
    for m in range(4 * per_epoch):
        d = donors[m // per_epoch]
        for i in range(n):
            item = {"case_id": f"c{i}", "regions": [0, 4, 9], "region_texts": texts[i], "report": "own report",
                    "geometry": torch.zeros(3, 1, 2, 2, 2)}
            out = pairing(m, i, item)
            assert out["regions"] == [0, 4, 9] and out["geometry"] is item["geometry"] and out["report"] is None
            assert out["region_texts"][0] == f"scan {d[i]} region 0" and out["region_texts"][2] == f"scan {d[i]} region 9"
            owner = int(out["region_texts"][1].split()[1])
            assert owner != i and (owner == d[i] if d[i] != 1 else owner not in (1, i))
            assert item["report"] == "own report"  # the item itself is left as it was (the memory cache holds it)
    texts[2] = [None] * len(REGIONS)
    texts[3] = [None] * len(REGIONS)
    for j in (0, 1, 4, 5):
        texts[j][7] = None
    texts[3][7] = "only scan 3 has one"
    with pytest.raises(ConfigError, match="only one training scan .* text for the"):
        EpochPairing(texts, per_epoch, seed=0)
    with pytest.raises(ConfigError, match="at least two"):
        EpochPairing(texts[:1], per_epoch, seed=0)


def test_batch_regions_follow_the_prompt_order(tok):
    cfg = small_config()
    ds = SynthDataset(3, cfg.input_size, seed=0, min_regions=2, max_regions=4)
    items = [ds[i] for i in range(3)]
    batch = make_batch(items, tok, cfg, rng=np.random.default_rng(0))
    # Visual inputs: [N, 1, X, Y, Z], region by region in prompt order.
    x, y, z = cfg.input_size
    assert batch["texture"].shape[1:] == (1, x, y, z) and batch["global"].shape == (3, 1, x, y, z)
    k = 0
    for b, it in enumerate(items):
        assert sorted(batch["areas"][b]) == sorted(REGIONS[r] for r in it["regions"])
        for area in batch["areas"][b]:
            r = REGIONS.index(area)
            j = it["regions"].index(r)
            assert torch.equal(batch["texture"][k], it["texture"][j].permute(0, 3, 2, 1))
            assert torch.equal(batch["geometry"][k], it["geometry"][j].permute(0, 3, 2, 1))
            k += 1
        target = tok.decode(batch["labels"][b][batch["labels"][b] >= 0], skip_special_tokens=True)
        assert [p.area for p in parse_rra(target)] == batch["areas"][b]
    assert k == batch["texture"].shape[0] == int(batch["region_counts"].sum())
    # Padded to the longest sample of the batch, never to max_seq_len.
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max()) < cfg.max_seq_len
    assert int((batch["input_ids"] == tok.convert_tokens_to_ids(TEXTURE_TOKEN)).sum()) == k * 4
    # The order changes with the step's generator, never the set.
    orders = {tuple(make_batch(items, tok, cfg, rng=np.random.default_rng(s))["areas"][2]) for s in range(8)}
    assert len(orders) > 1


def test_input_layout_reaches_the_batch_the_run_and_the_feature_cache(tok, tmp_path):
    from reg2rg.dataset import to_input_layout
    from reg2rg.model import build_model
    from reg2rg.train import run_fingerprint
    from reg2rg.vit_features import cache_vit_features

    cfg = small_config(freeze_vit=True)
    ras = cfg.replace(input_layout="ras")
    assert cfg.input_layout == load_preset("paper").input_layout == "lps"
    with pytest.raises(ConfigError, match="input_layout: 'RAS' is not one of lps, ras"):
        cfg.replace(input_layout="RAS")
    ds = SynthDataset(2, cfg.input_size, seed=0)
    items = [ds[0], ds[1]]
    # The batch: every visual input in the config's voxel order (ras: x and y reversed), the prompt unchanged.
    b_lps, b_ras = make_batch(items, tok, cfg), make_batch(items, tok, ras)
    for key in ("global", "texture", "geometry"):
        assert torch.equal(b_ras[key], torch.flip(b_lps[key], dims=(2, 3))), key
    assert torch.equal(b_lps["input_ids"], b_ras["input_ids"])
    # The run: another layout is another run (its checkpoints are not resumed).
    ids = [it["case_id"] for it in items]
    assert run_fingerprint(cfg, TrainingConfig(), ids, tok, 1) != run_fingerprint(ras, TrainingConfig(), ids, tok, 1)
    # The frozen-ViT feature cache: files of one layout are kept for it and computed again for the other.
    torch.manual_seed(0)
    visual = build_model(cfg, tok).visual.eval()
    folder = tmp_path / "vit_features"
    assert cache_vit_features(visual, ds, folder, input_layout="lps") == 2
    lps_feats = load_file(folder / "case_0.safetensors")
    assert cache_vit_features(visual, ds, folder, input_layout="lps") == 0
    assert cache_vit_features(visual, ds, folder, input_layout="ras") == 2
    ras_feats = load_file(folder / "case_0.safetensors")
    vol = torch.cat([items[0]["global"][None], items[0]["texture"]])
    assert torch.equal(ras_feats["texture"], visual.vit_features(to_input_layout(vol, "ras"))[1:].half())
    assert not torch.allclose(ras_feats["texture"].float(), lps_feats["texture"].float(), atol=1e-2)


def test_tokenizer_learns_from_training_reports_only():
    import pandas as pd

    df = pd.DataFrame([
        {"case_id": "a", "split": "train", "status": "included", "region_texts": ["lung text", None] + [None] * 8,
         "report": "whole a"},
        {"case_id": "b", "split": "train", "status": "excluded", "region_texts": ["excluded"] + [None] * 9,
         "report": "whole b"},
        {"case_id": "c", "split": "test", "status": "included", "region_texts": ["test text"] + [None] * 9,
         "report": "whole c"},
    ])
    assert training_texts(df) == ["lung text", "whole a"]


# --------------------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------------------

def _trained_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in ("modules.safetensors", "adapter/adapter_model.safetensors", "llm_base/model.safetensors"):
        out.update({f"{f}:{k}": v for k, v in load_file(str(model_dir / f)).items()})
    return out


@pytest.mark.slow
def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(tok, tmp_path):
    cfg = small_config()  # LoRA dropout on: the random state must be restored too
    ds = SynthDataset(5, cfg.input_size, seed=2)
    training = TrainingConfig(max_steps=10, per_device_batch_size=2, effective_batch_size=4, learning_rate=2e-3,
                              warmup_steps=3, mixed_precision="no", seed=0, checkpoint_every=4, log_every=2,
                              num_workers=1)
    train(cfg, training, dataset=ds, tokenizer=tok, work_dir=tmp_path / "a/work", out_dir=tmp_path / "a/model")
    # Killed after 6 steps: the checkpoint of step 4 is the latest; steps 5 and 6 are done again.
    assert train(cfg, training, dataset=ds, tokenizer=tok, work_dir=tmp_path / "b/work",
                 out_dir=tmp_path / "b/model", max_steps_this_run=6) is None
    assert not (tmp_path / "b/model").exists()
    assert latest_checkpoint(tmp_path / "b/work").name == "step_4"
    train(cfg, training, dataset=ds, tokenizer=tok, work_dir=tmp_path / "b/work", out_dir=tmp_path / "b/model")

    a, b = _trained_tensors(tmp_path / "a/model"), _trained_tensors(tmp_path / "b/model")
    assert a.keys() == b.keys() and len(a) > 50
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    log_a = [json.loads(line) for line in (tmp_path / "a/model/train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b/model/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [2, 4, 6, 8, 10]  # the redone steps are logged once
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-6)
    assert {"step", "epoch", "loss", "lr", "samples_per_s"} <= set(log_b[0])
    run = json.loads((tmp_path / "b/model/run_config.json").read_text())
    assert run["training"]["max_steps"] == 10 and run["steps"] == 10 and run["gradient_accumulation"] == 2
    assert {"model", "git", "versions", "config_digest"} <= set(run)
    # Two checkpoints are kept; a run with other settings does not resume from them.
    assert [p.name for p in sorted((tmp_path / "b/work/checkpoints").iterdir())] == ["step_10", "step_8"]
    other = TrainingConfig(**{**training.to_dict(), "learning_rate": 1e-3, "max_steps": 2})
    train(cfg, other, dataset=ds, tokenizer=tok, work_dir=tmp_path / "b/work", out_dir=tmp_path / "c/model")
    assert json.loads((tmp_path / "c/model/run_config.json").read_text())["steps"] == 2
    assert latest_checkpoint(tmp_path / "b/work").name == "step_2"


# --------------------------------------------------------------------------------------------------------------
# Region tokens reach the LLM
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_region_tokens_reach_the_llm(tmp_path_factory):
    """Trained with a new region order at every step, the model names every region's area in any order: it can
    only do so from the region's visual tokens (the global input is the same for every scan)."""
    from reg2rg.generate import GenerationSettings, generate_predictions

    model_dir, ds = overfit_model(tmp_path_factory)
    model = load_trained(model_dir)
    # The trained model folder loads through peft and holds the other trained modules.
    assert (model_dir / "adapter/adapter_config.json").is_file() and (model_dir / "tokenizer").is_dir()
    assert any(k.startswith("mask_encoder.") for k in load_file(str(model_dir / "modules.safetensors")))
    for shuffle, seed in ((False, 0), (True, 1), (True, 2)):
        df = generate_predictions(model, ds, GenerationSettings(batch_size=6, max_new_tokens=64,
                                                                shuffle_regions=shuffle, seed=seed), progress=False)
        ok, total = recognition(df)
        assert ok == total, (shuffle, seed, ok, total, df["prediction"].tolist()[:3])
    assert not set(SPECIAL_TOKENS) & set("".join(df["prediction"]).split())


# --------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-2 on two CPU processes
# --------------------------------------------------------------------------------------------------------------

LAUNCHER = '''
import logging, sys
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
# DeepSpeed's CPU backend JIT-compiles an optional shared-memory all-reduce kernel (deepspeed_shm_comm: about a
# minute of C++ build on the 2-core machine) when it first starts; without it gloo does the all-reduce (a GPU run
# uses NCCL and never builds it). Its probe result is a module-level dict that DeepSpeed reads at init.
import deepspeed.ops
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
from tiny_models import SynthDataset, small_config
from reg2rg.model import load_tokenizer
from reg2rg.train import TrainingConfig, train
cfg = small_config()
training = TrainingConfig(max_steps=6, per_device_batch_size=1, effective_batch_size=4, learning_rate=2e-3,
                          warmup_steps=2, mixed_precision="no", seed=0, checkpoint_every=3, log_every=1,
                          num_workers=0)
stop = int(sys.argv[2]) if len(sys.argv) > 2 else None
train(cfg, training, dataset=SynthDataset(5, cfg.input_size, seed=2), tokenizer=load_tokenizer({tok!r}),
      work_dir=sys.argv[1] + "/work", out_dir=sys.argv[1] + "/model", max_steps_this_run=stop)
'''


def _launch(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "CUDA_VISIBLE"))}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO / "config/accelerate/zero2.yaml"), "--deepspeed_config_file",
           str(REPO / "config/deepspeed/zero2.json"), "--num_processes", "2", "--main_process_port",
           env["MASTER_PORT"], str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise AssertionError(f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.slow
def test_zero2_on_two_cpu_processes_forms_one_group(tok, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install --no-build-isolation deepspeed)")
    tok.save_pretrained(str(tmp_path / "tokenizer"))
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(tests=str(TESTS), tok=str(tmp_path / "tokenizer")))
    # Stopped after 4 steps (the checkpoint of step 3 holds ZeRO-2's partitioned optimizer states), then resumed.
    _launch(script, str(tmp_path / "run"), "4")
    assert latest_checkpoint(tmp_path / "run/work").name == "step_3"
    proc = _launch(script, str(tmp_path / "run"))
    assert proc.stderr.count("resumed from") == 2  # both processes
    reports = [json.loads((tmp_path / f"run/work/ranks/rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["distributed_type"] == "DistributedType.DEEPSPEED" for r in reports)
    assert all(r["all_reduce_sum_of_rank_plus_1"] == 3.0 for r in reports)  # 1 + 2: one group of two
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    run = json.loads((tmp_path / "run/model/run_config.json").read_text())
    assert run["processes"] == 2 and run["gradient_accumulation"] == 2 and run["effective_batch_size"] == 4
    load_trained(tmp_path / "run/model")


def test_shared_memory_is_sized_from_the_settings_and_checked():
    """8 workers x prefetch 2 x ~352 MB per sample at the paper's size: a container's 64 MB /dev/shm fails at the
    start with the numbers named; enough free space passes; without workers nothing is shared."""
    import yaml

    from reg2rg.model import load_preset
    from reg2rg.train import TrainingConfig, check_shared_memory, sample_bytes, shared_memory_needed

    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    paper, training = load_preset("paper"), TrainingConfig(**settings["training"]["paper"])
    assert sample_bytes(paper, training) == 21 * 4 * 256 * 256 * 64  # global + 10 crops + 10 masks, float32
    assert shared_memory_needed(paper, training, processes=2) == 2 * 8 * 2 * 1 * 21 * 4 * 256 * 256 * 64
    with pytest.raises(ConfigError) as err:
        check_shared_memory(paper, training, 2, free_bytes=64 * 2**20)
    msg = str(err.value)
    assert "/dev/shm: 0.1 GB free" in msg and "11.3 GB" in msg and "num_workers 8" in msg
    assert "prefetch_factor 2" in msg and "352 MB per sample" in msg and "--shm-size" in msg
    assert check_shared_memory(paper, training, 2, free_bytes=12 * 10**9) == shared_memory_needed(paper, training, 2)
    fewer = dataclasses.replace(training, num_workers=2, prefetch_factor=1)
    assert check_shared_memory(paper, fewer, 2, free_bytes=2 * 10**9) == 4 * 21 * 4 * 256 * 256 * 64
    assert check_shared_memory(paper, dataclasses.replace(training, num_workers=0), 2, free_bytes=0) == 0
    # Cached ViT features instead of the global and texture volumes: 11 x 1024 tokens x 768 x fp16 + 10 masks.
    cached = dataclasses.replace(training, cache_vit_features=True)
    assert sample_bytes(paper, cached) == 11 * 1024 * 768 * 2 + 10 * 4 * 256 * 256 * 64
    with pytest.raises(ConfigError, match="prefetch_factor"):
        TrainingConfig(**{**settings["training"]["paper"], "prefetch_factor": 0})
