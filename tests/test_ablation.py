"""The ablation table (reg2rg.ablation) from hand-made metrics files, and the ablation settings of the config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reg2rg.ablation import (COLUMNS, CONTROL_SETTINGS, PAPER_SETTINGS, ablation_table, merge_overrides, row_from_metrics,
                             setting_flags)
from reg2rg.errors import InputError
from reg2rg.model.config import Reg2RGConfig
from workflow_runs import workflow_copy

REPO = Path(__file__).resolve().parents[1]


def _metrics(bleu1, ce_f1, region_f1, region_all=None):
    return {
        "model_preset": "tiny",
        "text": {"reg2rg": {"whole_report": {"mean": {
            "bleu_1": bleu1, "bleu_2": bleu1 / 2, "bleu_3": bleu1 / 3, "bleu_4": bleu1 / 4,
            "meteor": 0.25, "rouge_l": 0.5, "cider": 0.1}}}},
        "clinical_efficacy": {"micro": {"precision": 0.4, "recall": 0.6, "f1": ce_f1}},
        "region_recognition": {"mean": {"all_regions": {"f1": region_all if region_all is not None else region_f1},
                                        "without_lung_pleura": {"f1": region_f1}}},
    }


def _rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_table_from_metrics_files(tmp_path):
    c = tmp_path / "c.json"
    c.write_text(json.dumps(_metrics(0.3, 0.2, 0.0)))
    d = tmp_path / "d.json"
    d.write_text(json.dumps(_metrics(0.45678, 0.5, 0.96, 0.9)))
    text = ablation_table([("c", PAPER_SETTINGS["c"], c), ("d", PAPER_SETTINGS["d"], d),
                           ("gpt2", PAPER_SETTINGS["gpt2"], _metrics(0.1, 0.1, 0.5)),
                           ("shuffled", CONTROL_SETTINGS["shuffled"], _metrics(0.1, 0.1, 0.5))], title="T")
    assert text.startswith("T\n\n")
    rows = _rows(text)
    head = rows[0]
    assert head[:7] == ["setting", "global", "texture", "geometry", "RRA", "LFD", "LLM"]
    assert head[7] == "reports" and head[8:] == [t for t, _, _ in COLUMNS]
    by = {r[0]: dict(zip(head, r)) for r in rows[2:]}
    assert list(by) == ["c", "d", "gpt2", "shuffled"]
    assert by["d"]["reports"] == "own" and by["shuffled"]["reports"] == "reshuffled" and by["shuffled"]["RRA"] == "✓"
    assert [by["c"][k] for k in ("global", "texture", "geometry", "RRA", "LFD")] == ["✓", "✓", "✓", "", "✓"]
    assert by["d"]["RRA"] == "✓" and by["d"]["LLM"] == "preset" and by["gpt2"]["LLM"] == "gpt2"
    assert by["d"]["BLEU-1"] == "0.457" and by["d"]["BLEU-4"] == f"{0.45678 / 4:.3f}"
    assert by["d"]["METEOR"] == "0.250" and by["d"]["ROUGE-L"] == "0.500"
    assert (by["d"]["CE P"], by["d"]["CE R"], by["d"]["CE F1"]) == ("0.400", "0.600", "0.500")
    assert by["d"]["Region F1"] == "0.960" and by["d"]["Region F1 (all)"] == "0.900"
    # Without RRA nothing is named: no recognition figure, whatever the metrics file says.
    assert by["c"]["Region F1"] == "–"


def test_paper_rows_and_missing_values(tmp_path):
    m = _metrics(0.3, 0.2, 0.9)
    m["text"]["reg2rg"]["whole_report"]["mean"]["meteor"] = None  # no WordNet
    text = ablation_table([("d", {}, m)], paper={"d": {"bleu_1": 0.5, "ce_f1": 0.3}})
    rows = _rows(text)
    head = rows[0]
    ours, paper = (dict(zip(head, r)) for r in rows[2:])
    assert ours["METEOR"] == "–"
    assert paper["setting"] == "d (paper)" and paper["BLEU-1"] == "0.500" and paper["CE F1"] == "0.300"
    assert paper["ROUGE-L"] == "–"


def test_missing_or_broken_metrics_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.json"):
        ablation_table([("d", {}, tmp_path / "nope.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        ablation_table([("d", {}, bad)])


def test_row_from_empty_metrics_is_all_none():
    assert set(row_from_metrics({}).values()) == {None}


def test_merge_overrides_is_nested_and_pure():
    preset = {"llm": {"arch": "llama", "sizes": {"hidden_size": 64}}, "use_rra": True}
    out = merge_overrides(preset, {"llm": {"arch": "gpt2"}, "use_rra": False})
    assert out == {"llm": {"arch": "gpt2", "sizes": {"hidden_size": 64}}, "use_rra": False}
    assert preset["llm"]["arch"] == "llama" and preset["use_rra"] is True


def test_setting_flags():
    assert setting_flags({}) == {"use_global": True, "use_texture": True, "use_geometry": True, "use_rra": True,
                                 "use_lfd": True, "llm_arch": None, "report_pairing": "own"}
    f = setting_flags(PAPER_SETTINGS["baseline"])
    assert (f["use_global"], f["use_texture"], f["use_geometry"], f["use_rra"]) == (True, False, False, False)


def test_config_settings_match_the_paper_and_build_on_the_tiny_preset():
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = cfg["ablations"]["settings"]
    assert list(settings) == list(PAPER_SETTINGS) + list(CONTROL_SETTINGS)
    for name, training in CONTROL_SETTINGS.items():  # the full model, trained otherwise
        assert not settings[name].get("model") and settings[name]["training"] == training, name
    for name, flags in PAPER_SETTINGS.items():
        model = settings[name]["model"]
        for key, value in flags.items():
            if isinstance(value, dict):
                assert all(model[key][k] == v for k, v in value.items()), name
            else:
                assert model[key] == value, name
    assert set(cfg["ablations"]["table"]) <= set(settings)
    for name in cfg["ablations"]["table"]:
        Reg2RGConfig.from_dict(merge_overrides(cfg["presets"]["tiny"], settings[name].get("model", {})))


@pytest.mark.parametrize("training, d_trains", [({}, False), ({"max_steps": 7}, True)])
def test_full_model_setting_reuses_the_workflow_model(tmp_path, training, d_trains):
    """`d` is the data set's own model and training: the table evaluates results/{dataset}/model instead of training
    it a second time, unless ablations.training makes its training differ."""
    import subprocess
    import sys

    workflow_copy(tmp_path)
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({"ablations": {"table": ["baseline", "d"],
                                                                      "training": training}}))
    # --cores 2: a dry run otherwise caps every job at one thread, and the thread checks below could not fail.
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "results/demo/ablation/table.md", "-n",
                           "--cores", "2", "--printshellcmds", "--configfile", "over.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "--out results/demo/ablation/baseline/model" in out
    assert ("--out results/demo/ablation/d/model" in out) is d_trains
    assert ("--out results/demo/model " in out) is not d_trains  # the workflow's own model, for d
    # The tiny preset's training runs one torch thread (training.tiny.resources.threads), whatever the cores.
    assert "--num_cpu_threads_per_process 1'" in out
    # Generation too (generation.resources.tiny.threads: 1): Snakemake prints a job's threads only when above one.
    jobs = out.split("\nrule ")
    generating = [j for j in jobs if j.startswith(("generate:", "ablation_generate:"))]
    assert generating and not [j for j in generating if "threads:" in j.split("\n\n")[0]]


def test_gpt2_setting_has_no_dropout_like_the_tiny_llama(tmp_path):
    """The gpt2 row must differ from `d` by the decoder only: GPT-2's config defaults to dropout 0.1 (embeddings,
    residuals, attention), which the tiny Llama does not have; the setting turns it off."""
    import torch

    from reg2rg.constants import REGIONS
    from reg2rg.model import train_tiny_tokenizer
    from reg2rg.model.build import load_base_llm

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    tok = train_tiny_tokenizer([f"The region {i} is {a}: normal." for i in range(1, 11) for a in REGIONS] * 3, 300,
                               tmp_path / "tok")
    setting = cfg["ablations"]["settings"]["gpt2"]["model"]
    gpt2 = Reg2RGConfig.from_dict(merge_overrides(cfg["presets"]["tiny"], setting))
    llm = load_base_llm(gpt2, tok)
    assert llm.config.model_type == "gpt2"
    assert (llm.config.embd_pdrop, llm.config.resid_pdrop, llm.config.attn_pdrop) == (0.0, 0.0, 0.0)
    assert all(m.p == 0.0 for m in llm.modules() if isinstance(m, torch.nn.Dropout))
    llama = load_base_llm(Reg2RGConfig.from_dict(cfg["presets"]["tiny"]), tok)
    assert llama.config.attention_dropout == 0.0
