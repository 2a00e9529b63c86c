"""Generation: batched = one at a time, the output table, decoding settings reach GenerationConfig and nothing is
inherited from a generation_config.json beside the LLM, the CLI, the workflow's radgenome error."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from reg2rg.constants import REGIONS
from reg2rg.generate import COLUMNS, GenerationSettings, generate_predictions, reference_text
from reg2rg.model import load_trained
from reg2rg.rra import parse_rra
from tiny_models import overfit_model, recognition
from workflow_runs import workflow_copy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return overfit_model(tmp_path_factory)


@pytest.fixture(scope="module")
def model(trained):
    return load_trained(trained[0])


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """A test manifest of three synthetic chest scans (the loader benchmark's phantom with its ten region masks)
    and one excluded scan, cached by the cache stage's own code (cache_manifest, as rule cache_shard runs it) for
    the tiny models' input size, laid out as the workflow does: results/x/{manifest/test.parquet,cache/}."""
    from reg2rg.bench import LOADER_SPACING, write_loader_scan
    from reg2rg.cache import cache_manifest
    from reg2rg.manifest import read_manifest

    root = tmp_path_factory.mktemp("generate") / "results" / "x"
    rows = []
    for k in range(4):
        case = f"scan_{k}"
        files = write_loader_scan(root.parent.parent / "scans" / case, (48, 48, 24), seed=k)
        included = k < 3
        rows.append({
            "case_id": case, "split": "test", "source_split": "valid", "status": "included" if included else
            "excluded", "reason": "" if included else "ingest failed: truncated file", "image": str(files["volume"]),
            "volume": str(files["volume"]) if included else None, "mask": str(files["label"]) if included else None,
            "size": [48, 48, 24], "spacing": list(LOADER_SPACING), "origin": [0.0, 0.0, 0.0],
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "intensity_mode": "hu",
            "region_status": ["present"] * len(REGIONS), "region_texts": [f"{a} text {k}." for a in REGIONS],
            "regions_usable": list(REGIONS) if included else [], "report": f"report {k}", "labels": None,
            "notes": []})
    manifest = root / "manifest" / "test.parquet"
    manifest.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    status = cache_manifest(read_manifest(manifest), root / "cache", threads=1, input_size=(32, 32, 8))
    assert status["status"].tolist() == ["ok", "ok", "ok", "skipped"]
    return manifest, root / "cache"


def _capture_generation_configs(model, monkeypatch) -> list:
    seen = []
    original = model.llm.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["generation_config"])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.llm, "generate", spy)
    return seen


def test_reference_text_skips_regions_without_text_and_falls_back_to_the_report():
    from reg2rg.model import load_preset

    cfg = load_preset("tiny")
    item = {"regions": [5, 0, 3], "region_texts": ["Clear lungs.", None, " Normal. "], "report": "whole"}
    assert reference_text(item, cfg) == "The region 1 is lung: Clear lungs. The region 3 is esophagus: Normal."
    assert [p.index for p in parse_rra(reference_text(item, cfg))] == [1, 3]
    assert reference_text({"regions": [1], "region_texts": [None], "report": "Whole report."}, cfg) == "Whole report."
    assert reference_text(item, cfg.replace(use_rra=False)) == "Clear lungs. Normal."


@pytest.mark.slow
def test_batched_generation_equals_one_at_a_time(model, trained):
    _, ds = trained
    lengths = {len(ds[i]["regions"]) for i in range(6)}
    assert len(lengths) > 1  # prompts of different lengths: left padding is exercised
    settings = dict(max_new_tokens=48, shuffle_regions=True, seed=3)
    batched = generate_predictions(model, torch.utils.data.Subset(ds, range(6)),
                                   GenerationSettings(batch_size=6, **settings), progress=False)
    single = generate_predictions(model, torch.utils.data.Subset(ds, range(6)),
                                  GenerationSettings(batch_size=1, **settings), progress=False)
    assert batched["prediction"].tolist() == single["prediction"].tolist()
    assert batched["region_areas"].map(list).tolist() == single["region_areas"].map(list).tolist()
    assert len(set(batched["prompt_tokens"])) > 1


@pytest.mark.slow
def test_prediction_table(model, trained):
    _, ds = trained
    df = generate_predictions(model, torch.utils.data.Subset(ds, range(4)), GenerationSettings(max_new_tokens=64),
                              meta={"dataset": "synthetic", "model_preset": "tiny", "config_digest": "abc"},
                              progress=False)
    assert list(df.columns) == list(COLUMNS)
    assert df["case_id"].tolist() == [f"case_{i}" for i in range(4)]
    for row, i in zip(df.itertuples(), range(4)):
        item = ds[i]
        # Fixed order at test time: the scan's regions in REGIONS order.
        assert list(row.region_areas) == [REGIONS[r] for r in sorted(item["regions"])]
        assert [p.area for p in parse_rra(row.reference)] == list(row.region_areas)
        assert [(p["index"], p["named_area"], p["text"]) for p in row.regions] == \
            [(p.index, p.area, p.text) for p in parse_rra(row.prediction)]
        assert row.finished and row.generated_tokens > 0 and row.n_regions == len(item["regions"])
    assert set(df["dataset"]) == {"synthetic"} and set(df["model_preset"]) == {"tiny"}
    decoding = json.loads(df["decoding"].iloc[0])
    assert decoding["do_sample"] is False and decoding["num_beams"] == 1 and decoding["shuffle_regions"] is False
    assert recognition(df) == (sum(df["n_regions"]), sum(df["n_regions"]))
    # The table goes through Parquet and the evaluation's reader.
    from reg2rg.evaluate import check_predictions

    check_predictions(df)


@pytest.mark.slow
def test_decoding_settings_reach_generation_config(model, trained, monkeypatch):
    _, ds = trained
    seen = _capture_generation_configs(model, monkeypatch)
    sub = torch.utils.data.Subset(ds, range(2))
    generate_predictions(model, sub, GenerationSettings(max_new_tokens=5), progress=False)
    greedy = seen[-1]
    assert (greedy.do_sample, greedy.num_beams, greedy.max_new_tokens) == (False, 1, 5)
    assert greedy.use_cache is True
    settings = GenerationSettings(max_new_tokens=7, do_sample=True, top_k=5, top_p=0.9, temperature=0.7,
                                  repetition_penalty=1.3, seed=11)
    first = generate_predictions(model, sub, settings, progress=False)
    cfg = seen[-1]
    assert (cfg.do_sample, cfg.top_k, cfg.top_p, cfg.temperature, cfg.repetition_penalty, cfg.max_new_tokens) == \
        (True, 5, 0.9, 0.7, 1.3, 7)
    again = generate_predictions(model, sub, settings, progress=False)
    assert first["prediction"].tolist() == again["prediction"].tolist()  # sampling is seeded
    with pytest.raises(ValueError, match="beam search"):  # the tiny preset's region text features track rows
        generate_predictions(model, sub, GenerationSettings(max_new_tokens=6, num_beams=2), progress=False)
    monkeypatch.setattr(model.config, "region_text_features", False)
    generate_predictions(model, sub, GenerationSettings(max_new_tokens=6, num_beams=2), progress=False)
    assert seen[-1].num_beams == 2 and seen[-1].do_sample is False


@pytest.mark.slow
def test_no_sampling_inherited_from_a_generation_config_beside_the_llm(trained, tmp_path, monkeypatch):
    model_dir, ds = trained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / "llm_base/generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 5.0, "top_k": 3, "top_p": 0.5, "num_beams": 3, "max_new_tokens": 2,
         "repetition_penalty": 2.0}))
    model = load_trained(copy)
    seen = _capture_generation_configs(model, monkeypatch)
    sub = torch.utils.data.Subset(ds, range(3))
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(generate_predictions(model, sub, GenerationSettings(max_new_tokens=48), progress=False))
    assert runs[0]["prediction"].tolist() == runs[1]["prediction"].tolist()
    reference = generate_predictions(load_trained(model_dir), sub, GenerationSettings(max_new_tokens=48),
                                     progress=False)
    assert runs[0]["prediction"].tolist() == reference["prediction"].tolist()
    cfg = seen[-1]
    assert (cfg.do_sample, cfg.num_beams, cfg.max_new_tokens, cfg.repetition_penalty) == (False, 1, 48, 1.0)


@pytest.mark.slow
def test_generate_command(trained, real_cache, tmp_path):
    """`reg2rg generate`: options -> settings -> the Parquet file and the model's run metadata, on a real cache
    beside the manifest (the cache stage's files, found from the manifest's path) and the trained model saved
    with save_pretrained; the table is what generate_predictions gives on Reg2RGDataset over the same files."""
    from reg2rg.cli import main
    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.manifest import read_manifest

    model_dir, _ = trained
    manifest, cache_dir = real_cache
    out = tmp_path / "out/predictions.parquet"
    assert main(["generate", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(out),
                 "--max-new-tokens", "40", "--shuffle-regions", "--seed", "4", "--batch-size", "2"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == list(COLUMNS)
    assert df["case_id"].tolist() == ["scan_0", "scan_1", "scan_2"]  # the excluded scan is not generated for
    ds = Reg2RGDataset(read_manifest(manifest), cache_dir, (32, 32, 8), split=None, text=False)
    for row, i in zip(df.itertuples(), range(len(ds))):
        assert sorted(row.region_areas) == sorted(REGIONS[r] for r in ds[i]["regions"])
        assert row.n_regions == len(ds[i]["regions"]) and row.generated_tokens > 0
    decoding = json.loads(df["decoding"].iloc[0])
    assert decoding["max_new_tokens"] == 40 and decoding["shuffle_regions"] is True and decoding["seed"] == 4
    run = json.loads((model_dir / "run_config.json").read_text())
    assert set(df["config_digest"]) == {run["config_digest"]} and set(df["model_preset"]) == {"tiny"}
    assert set(df["dataset"]) == {"synthetic"}
    direct = generate_predictions(load_trained(model_dir), ds, GenerationSettings(
        max_new_tokens=40, shuffle_regions=True, seed=4, batch_size=2), progress=False)
    assert df["prediction"].tolist() == direct["prediction"].tolist()


def test_workflow_radgenome_predictions_without_root_names_the_key(tmp_path):
    workflow_copy(tmp_path)
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n",
                           "results/radgenome/predictions.parquet"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "set datasets.radgenome.root in config/config.yaml" in out
    assert "Warning" not in out


@pytest.mark.slow
def test_demo_workflow_trains_and_generates(tmp_path):
    """The workflow up to the predictions on a small demo: ... -> cache -> tokenizer -> train (accelerate launch)
    -> generate; a second run has nothing to do, and a lost model folder is rewritten from the last checkpoint.
    (The default target, evaluation and viewer included, is tests/test_demo_goals.py's run of the shipped demo.)"""
    import yaml

    workflow_copy(tmp_path)
    small = {"datasets": {"demo": {"generate": {"cases": 4, "seed": 0, "test_fraction": 0.25,
                                                "shape": [112, 96, 32]}}},
             "training": {"tiny": {"max_steps": 4, "checkpoint_every": 2, "log_every": 2}},
             "generation": {"max_new_tokens": 32}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))

    def snakemake(*args):
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args, "--cores", "2",
                               "--configfile", "small.yaml"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    predictions = "results/demo/predictions.parquet"
    snakemake(predictions)
    model = tmp_path / "results/demo/model"
    run = json.loads((model / "run_config.json").read_text())
    assert run["steps"] == 4 and run["preset"] == "tiny" and run["dataset"] == "demo"
    assert run["training"]["max_steps"] == 4 and run["git"].keys() == {"commit", "dirty"}
    assert [json.loads(line)["step"] for line in (model / "train_log.jsonl").read_text().splitlines()] == [2, 4]
    assert (tmp_path / "results/demo/tokenizer/tokenizer.json").is_file()
    assert (tmp_path / "results/demo/model_work/tensorboard").is_dir()
    df = pd.read_parquet(tmp_path / predictions)
    assert list(df.columns) == list(COLUMNS) and len(df) >= 1
    assert set(df["model_preset"]) == {"tiny"} and json.loads(df["decoding"].iloc[0])["max_new_tokens"] == 32
    assert "Nothing to be done" in snakemake(predictions, "-n")
    shutil.rmtree(model)
    log = snakemake("results/demo/model")
    assert (model / "run_config.json").is_file()
    assert "resumed from" in (tmp_path / "results/demo/logs/train.log").read_text()
    assert "rule train" in log


def _random_tiny_model_and_items(tmp_path, real_cache):
    """A randomly initialised tiny model (no training) saved with save_trained and loaded back as generate does,
    and the items of the real cache: sampling from it is near uniform, so two seeds give different texts."""
    from reg2rg.dataset import Reg2RGDataset
    from reg2rg.manifest import read_manifest
    from reg2rg.model import build_model, load_preset, load_tokenizer, save_trained, train_tiny_tokenizer

    texts = ["No pleural effusion.", "Heart size is normal.", "A 6 mm nodule in the right upper lobe."] * 5
    train_tiny_tokenizer(texts, 300, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    cfg = load_preset("tiny", input_size=[32, 32, 8], vit={"patch_size": [16, 16, 4]},
                      mask_encoder={"patch_size": [16, 16, 8]}, perceiver={"num_latents": 4},
                      llm={"sizes": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "num_key_value_heads": 4, "intermediate_size": 64,
                                     "max_position_embeddings": 1024}})
    torch.manual_seed(0)
    save_trained(build_model(cfg, tok), tmp_path / "model")
    model = load_trained(tmp_path / "model")
    manifest, cache_dir = real_cache
    return model, Reg2RGDataset(read_manifest(manifest), cache_dir, model.config.input_size, split=None, text=False)


def test_authors_decoding_preset_and_seeded_sampling(tmp_path, real_cache):
    from reg2rg.generate import DECODING_PRESETS

    default = GenerationSettings.from_dict({})
    assert (default.decoding_preset, default.do_sample, default.num_beams) == ("greedy", False, 1)
    authors = GenerationSettings.from_dict({"decoding": "authors", "seed": 5})
    assert (authors.do_sample, authors.temperature, authors.top_p, authors.top_k, authors.max_new_tokens) == \
        (True, 0.6, 0.9, 30, 500)
    assert DECODING_PRESETS["authors"]["max_new_tokens"] == 500
    # Keys given beside the preset override it, in the mapping and as CLI overrides.
    assert GenerationSettings.from_dict({"decoding": "authors", "top_k": 5}, max_new_tokens=8).top_k == 5
    assert GenerationSettings.from_dict({"decoding": "authors"}, max_new_tokens=8).max_new_tokens == 8
    with pytest.raises(Exception, match="generation.decoding: 'nucleus'"):
        GenerationSettings.from_dict({"decoding": "nucleus"})

    model, items = _random_tiny_model_and_items(tmp_path, real_cache)

    def run(seed):
        settings = GenerationSettings.from_dict({"decoding": "authors", "seed": seed, "batch_size": 2},
                                                max_new_tokens=12)
        return generate_predictions(model, items, settings, progress=False)

    first, again, other = run(7), run(7), run(8)
    assert first["prediction"].tolist() == again["prediction"].tolist()  # same seed: the same samples
    assert first["prediction"].tolist() != other["prediction"].tolist()  # another seed: other samples
    decoding = json.loads(first["decoding"].iloc[0])
    assert decoding["decoding_preset"] == "authors" and decoding["seed"] == 7 and decoding["do_sample"] is True
    assert json.loads(other["decoding"].iloc[0])["seed"] == 8
    # Greedy does not depend on the seed.
    greedy = [generate_predictions(model, items, GenerationSettings.from_dict({"seed": s}, max_new_tokens=12),
                                   progress=False)["prediction"].tolist() for s in (7, 8)]
    assert greedy[0] == greedy[1]


def test_cli_decoding_option(tmp_path):
    from reg2rg.cli import build_parser

    args = build_parser().parse_args(["generate", "--model", "m", "--manifest", "x", "--out", "o",
                                      "--decoding", "authors", "--top-k", "10"])
    overrides = {k: getattr(args, k) for k in ("decoding", "top_k", "temperature")}
    settings = GenerationSettings.from_dict(None, **overrides)
    assert (settings.decoding_preset, settings.top_k, settings.temperature) == ("authors", 10, 0.6)
