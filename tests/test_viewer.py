"""The viewer site from a small synthetic set of predictions, manifest, ingested volumes/masks and metrics:
files, links, scores, region colours, plots, and no identifier or path on any page."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from reg2rg.constants import ABNORMALITY_LABELS, REGIONS
from reg2rg.masks import pack_masks
from reg2rg.viewer import REGION_COLORS, build_viewer, case_scores, color_hex

SECRET = "DOE^JANE_4711"  # a patient name that sits in the source paths: it must never reach a page


def _scan(path_vol: Path, path_mask: Path, regions: list[int]):
    hu = np.full((8, 24, 24), -1000, np.int16)
    hu[1:7, 4:20, 4:20] = 40
    masks = np.zeros((len(REGIONS), 8, 24, 24), bool)
    for k, i in enumerate(regions):
        masks[i, 2:6, 5 + 4 * k:8 + 4 * k, 6:18] = True
    for arr, path in ((hu, path_vol), (pack_masks(masks), path_mask)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(img, str(path))


def _dataset(root: Path) -> Path:
    res = root / "results" / "synth"
    for d in ("volumes", "masks", "manifest"):
        (res / d).mkdir(parents=True)
    cases = [("case_a", [5, 4], "The region 1 is lung: Clear lungs. The region 2 is heart: Normal heart.",
              "The region 1 is lung: Clear lungs. The region 2 is lung: Normal heart size."),
             ("case/b", [0], "The region 1 is abdomen: Liver normal.", "The region 1 is abdomen: Liver normal.")]
    preds, man = [], []
    for case, regions, ref, pred in cases:
        name = case.replace("/", "_")
        _scan(res / "volumes" / f"{name}.nii.gz", res / "masks" / f"{name}.nii.gz", regions)
        from reg2rg.rra import parse_rra

        preds.append({"case_id": case, "reference": ref, "prediction": pred,
                      "regions": [{"index": p.index, "named_area": p.area, "text": p.text} for p in parse_rra(pred)],
                      "region_areas": [REGIONS[i] for i in regions]})
        man.append({"case_id": case, "split": "test", "status": "included",
                    "image": f"/data/{SECRET}/{name}.dcm",
                    "volume": f"results/synth/volumes/{name}.nii.gz", "mask": f"results/synth/masks/{name}.nii.gz"})
    pd.DataFrame(preds).to_parquet(res / "predictions.parquet")
    pd.DataFrame(man).to_parquet(res / "manifest" / "test.parquet")
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 20, 30)).save(res / "report_lengths.png")
    # every label but the last in a reference or a prediction; the last in none (left out of the findings table)
    per_label = [{"label": lab, "precision": 0.5, "recall": 0.25, "f1": i / 18, "support": int(i < 17) * (i + 1),
                  "predicted": int(i < 17), "tp": 1, "fp": 0, "fn": 0, "tn": 1}
                 for i, lab in enumerate(ABNORMALITY_LABELS)]
    metrics = {"dataset": "synth", "n_scans": 2, "model_preset": "tiny",
               "clinical_efficacy": {"micro": {"f1": 0.4}, "chance_micro_f1": 0.25, "per_label": per_label},
               "region_recognition": {"accuracy": 2 / 3, "confusion": {
                   "true": list(REGIONS), "named": list(REGIONS),
                   "counts": np.eye(len(REGIONS), dtype=int).tolist()}},
               "lengths": {"plot": "report_lengths.png"}}
    (res / "metrics.json").write_text(json.dumps(metrics))
    return res


def test_case_scores():
    s = case_scores("The region 1 is lung: Clear.", "The region 1 is heart: Clear.",
                    [{"index": 1, "named_area": "heart", "text": "Clear."}], ["lung"])
    assert (s["recognition_correct"], s["recognition_total"]) == (0, 1)
    assert s["rouge_l"] == 1.0 and s["bleu_4"] > 0


def test_viewer_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the manifest's paths are relative to the workflow root
    res = _dataset(tmp_path)
    index = build_viewer(res / "predictions.parquet", res / "manifest" / "test.parquet", res / "metrics.json",
                         res / "viewer")
    assert index == res / "viewer" / "index.html"
    page = index.read_text()
    links = re.findall(r'href="([^"]+)"', page)
    assert links == ["cases/case_a.html", "cases/case_b.html"]
    for link in links + re.findall(r'src="([^"]+)"', page):
        assert (index.parent / link).is_file(), link
    assert {p.name for p in (res / "viewer" / "plots").iterdir()} == {
        "report_lengths.png", "clinical_efficacy.png", "recognition_confusion.png"}
    assert "1/2" in page and "1/1" in page  # recognition per scan: case_a named heart as lung
    assert "CE micro F1 0.400 (chance level 0.250)" in page
    findings = page.split("<h2>Findings</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td>", findings)
    assert [r[0] for r in rows] == list(ABNORMALITY_LABELS[:17])
    assert rows[2][1:] == ("3", "1", "0.500", "0.250")  # support, predicted, precision, recall

    a = (res / "viewer" / "cases" / "case_a.html").read_text()
    assert 'href="../index.html"' in a and a.count("data:image/png;base64,") == 2
    assert color_hex("lung") in a and color_hex("heart") in a and color_hex("thyroid") not in a
    assert "named lung: not grounded" in a and "Normal heart size." in a and "Normal heart." in a
    for f in [index, *(res / "viewer" / "cases").iterdir()]:
        text = f.read_text()
        assert SECRET not in text and "/data/" not in text and str(tmp_path) not in text and "volumes/" not in text

    # the overlay pixels of case_a's axial slice carry the lung and heart colours exactly (contours)
    import base64
    import io

    from PIL import Image

    b64 = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", a)[0]
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)
    for region in ("lung", "heart"):
        assert (np.abs(rgb - np.asarray(REGION_COLORS[region])).sum(axis=2) == 0).sum() > 50, region


def test_viewer_rule_is_in_the_workflow():
    repo = Path(__file__).resolve().parents[1]
    assert 'include: "workflow/rules/viewer.smk"' in (repo / "Snakefile").read_text()
    rule = (repo / "workflow/rules/viewer.smk").read_text()
    assert 'metrics="results/{dataset}/metrics.json"' in rule and 'index="results/{dataset}/viewer/index.html"' in rule
