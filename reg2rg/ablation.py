"""The ablation study (the paper's Table 5): named model settings, and one Markdown table built from their
metrics.json files.

A setting is a name and a set of model overrides (Reg2RGConfig flags: use_global, use_texture, use_geometry,
use_rra, use_lfd, llm.arch, ...) applied to the data set's model preset; the workflow trains, generates and
evaluates each (workflow/rules/ablation.smk) and `ablation_table` turns the metrics files into the table.
Text metrics are the `reg2rg` protocol's means over scans (the paper's), clinical efficacy is micro
precision/recall/F1, region recognition is the mean F1 over areas without lung and pleura (as the paper
reported it) and over all areas.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from reg2rg.files import read_json

# The paper's settings (Table 5): baseline, then adding texture, geometry, global, RRA; plus two more.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "baseline": {"use_global": True, "use_texture": False, "use_geometry": False, "use_rra": False},
    "a": {"use_global": False, "use_texture": True, "use_geometry": False, "use_rra": False},
    "b": {"use_global": False, "use_texture": True, "use_geometry": True, "use_rra": False},
    "c": {"use_global": True, "use_texture": True, "use_geometry": True, "use_rra": False},
    "d": {"use_global": True, "use_texture": True, "use_geometry": True, "use_rra": True},
    "no_lfd": {"use_lfd": False},
    "gpt2": {"llm": {"arch": "gpt2"}},
}
# Not in the paper: the full model trained on images paired with other scans' reports, a new pairing every epoch
# (the control that the findings come from the image; training.report_pairing).
CONTROL_SETTINGS: dict[str, dict[str, Any]] = {"shuffled": {"report_pairing": "reshuffled"}}

# (column title, key into the row dict, number of decimals)
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("BLEU-1", "bleu_1", 3), ("BLEU-2", "bleu_2", 3), ("BLEU-3", "bleu_3", 3), ("BLEU-4", "bleu_4", 3),
    ("METEOR", "meteor", 3), ("ROUGE-L", "rouge_l", 3),
    ("CE P", "ce_precision", 3), ("CE R", "ce_recall", 3), ("CE F1", "ce_f1", 3),
    ("Region F1", "region_f1", 3), ("Region F1 (all)", "region_f1_all", 3),
)
FLAGS: tuple[tuple[str, str], ...] = (("global", "use_global"), ("texture", "use_texture"),
                                      ("geometry", "use_geometry"), ("RRA", "use_rra"))
_DEFAULT_FLAGS = {"use_global": True, "use_texture": True, "use_geometry": True, "use_rra": True,
                  "use_lfd": True}


def merge_overrides(preset: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The preset with the overrides merged in (nested mappings merged key by key; inputs not changed)."""
    out = dict(preset)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_overrides(out[k], v)
        else:
            out[k] = v
    return out


def setting_flags(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The ablation flags of a setting (unset flags are on, as in the full model), the LLM architecture and the
    report pairing of its training (`report_pairing`, "own" unless the setting's training changes it)."""
    flags = {k: bool(overrides.get(k, v)) for k, v in _DEFAULT_FLAGS.items()}
    flags["llm_arch"] = (overrides.get("llm") or {}).get("arch")
    flags["report_pairing"] = overrides.get("report_pairing", "own")
    return flags


def row_from_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The table's numbers from one metrics.json dict (None where the metrics file has none)."""
    text = ((metrics.get("text") or {}).get("reg2rg") or {}).get("whole_report") or {}
    mean = text.get("mean") or {}
    ce = (metrics.get("clinical_efficacy") or {}).get("micro") or {}
    rec = ((metrics.get("region_recognition") or {}).get("mean") or {})
    return {
        **{k: mean.get(k) for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l")},
        "ce_precision": ce.get("precision"), "ce_recall": ce.get("recall"), "ce_f1": ce.get("f1"),
        "region_f1": (rec.get("without_lung_pleura") or {}).get("f1"),
        "region_f1_all": (rec.get("all_regions") or {}).get("f1"),
    }


def load_metrics(path: str | Path) -> dict:
    return read_json(path, "metrics file")


def _fmt(v, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def ablation_table(settings: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | str | Path]],
                   paper: Mapping[str, Mapping[str, float]] | None = None, title: str | None = None) -> str:
    """One Markdown table, a row per setting in the order given.

    settings: (name, overrides, metrics dict or path to metrics.json); overrides are the setting's model keys
    plus `report_pairing` from its training. paper: setting name -> the paper's
    numbers by column key (COLUMNS keys); given, each such setting gets a second row "name (paper)".
    A region recognition column is "–" for a setting without RRA (nothing is named there).
    """
    head = ["setting", *(t for t, _ in FLAGS), "LFD", "LLM", "reports", *(t for t, _, _ in COLUMNS)]
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    paper = paper or {}
    for name, overrides, metrics in settings:
        flags = setting_flags(overrides)
        if not isinstance(metrics, Mapping):
            metrics = load_metrics(metrics)
        row = row_from_metrics(metrics)
        if not flags["use_rra"]:
            row["region_f1"] = row["region_f1_all"] = None
        marks = ["✓" if flags[k] else "" for _, k in FLAGS]
        lfd = "✓" if flags["use_lfd"] else ""
        cells = [name, *marks, lfd, flags["llm_arch"] or "preset", flags["report_pairing"],
                 *(_fmt(row[k], d) for _, k, d in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
        if name in paper:
            p = paper[name]
            cells = [f"{name} (paper)", *marks, lfd, flags["llm_arch"] or "preset", flags["report_pairing"],
                     *(_fmt(p.get(k), d) for _, k, d in COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
