"""Pictures and pages a radiologist looks at: slices with each region's mask overlaid in its own colour, the
region texts beside them in the same colour, and a static site over a data set's test predictions.

- `REGION_COLORS`: the one place a region's colour is defined (the report page, the viewer and the tests use it).
- `overlay_png`, `case_slices`: axial and coronal slices (physical aspect, radiological convention: the
  patient's right on the image's left, anterior / superior up) with filled masks and an opaque contour.
- `report_html`: the self-contained page of `reg2rg report` (images embedded as base64 PNG).
- `build_viewer`: `results/{dataset}/viewer/` (index.html, cases/*.html, plots/*.png) from the predictions,
  the test manifest (ingested volume and masks per scan), metrics.json and its plots.

Pages never show a path, a DICOM header value or anything else from the source files: a scan is shown by its
data set case id (viewer) or a neutral name made from its checksum (report).
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from reg2rg.constants import HU_MAX, HU_MIN, REGIONS

log = logging.getLogger(__name__)

# One fixed colour per region (REGIONS order), RGB. Saturated and far apart, so that each is recognisable both
# on a grey CT and as text on white.
REGION_COLORS: dict[str, tuple[int, int, int]] = {
    "abdomen": (230, 159, 0),
    "bone": (240, 228, 66),
    "breast": (204, 121, 167),
    "esophagus": (148, 103, 189),
    "heart": (213, 45, 45),
    "lung": (0, 158, 115),
    "mediastinum": (0, 114, 178),
    "pleura": (86, 180, 233),
    "thyroid": (255, 0, 255),
    "trachea and bronchie": (140, 86, 75),
}
FILL_ALPHA = 0.35
CONTOUR_PX = 2
DISPLAY_WIDTH = 360  # pixels of a slice picture's width


def color_hex(region: str) -> str:
    r, g, b = REGION_COLORS[region]
    return f"#{r:02x}{g:02x}{b:02x}"


# --------------------------------------------------------------------------------------------------------------
# Slices and overlays (pure functions on arrays)
# --------------------------------------------------------------------------------------------------------------

def window_gray(hu: np.ndarray, lo: float = HU_MIN, hi: float = HU_MAX) -> np.ndarray:
    """HU -> uint8 grey in the model's window."""
    x = (np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)
    return (x * 255 + 0.5).astype(np.uint8)


def _resize(arr: np.ndarray, size_wh: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(arr)
    return np.asarray(img.resize(size_wh, Image.NEAREST if nearest else Image.BILINEAR))


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner contour of a boolean mask, `width` pixels thick."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return mask & ~inner


def overlay_rgb(gray: np.ndarray, masks: dict[str, np.ndarray], pixel_mm: tuple[float, float],
                width: int = DISPLAY_WIDTH) -> np.ndarray:
    """A slice (uint8 grey [rows, cols]) with masks {region: bool [rows, cols]} overlaid: RGB uint8, scaled to
    `width` pixels wide with the physical aspect (`pixel_mm`: row and column size in mm). Each region is
    filled at FILL_ALPHA and outlined (CONTOUR_PX pixels) in exactly its REGION_COLORS colour."""
    rows, cols = gray.shape
    height = max(1, int(round(width * rows * pixel_mm[0] / (cols * pixel_mm[1]))))
    out = np.repeat(_resize(gray, (width, height), nearest=False)[..., None], 3, axis=2).astype(np.float32)
    edges = []
    for region, m in masks.items():
        if not m.any():
            continue
        big = _resize(m.astype(np.uint8) * 255, (width, height), nearest=True) > 127
        color = np.asarray(REGION_COLORS[region], np.float32)
        out[big] = out[big] * (1 - FILL_ALPHA) + color * FILL_ALPHA
        edges.append((_edge(big, CONTOUR_PX), color))
    for e, color in edges:  # contours last: exact colours
        out[e] = color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _best(counts: np.ndarray) -> int:
    return int(np.argmax(counts)) if counts.max() > 0 else len(counts) // 2


def case_slices(hu: np.ndarray, masks: np.ndarray, spacing_xyz: Sequence[float],
                regions: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Axial and coronal overlays of one scan on its (canonical LPS) grid: `hu` [z, y, x], `masks` bool
    [10, z, y, x], spacing (x, y, z) mm. The axial slice is the one with the most mask voxels, the coronal
    likewise; superior is up in the coronal view. `regions`: indices to draw (default: all with a voxel).
    Returns {"axial": RGB, "coronal": RGB}."""
    sx, sy, sz = (float(v) for v in spacing_xyz)
    if regions is None:
        regions = [i for i in range(len(REGIONS)) if masks[i].any()]
    union = masks[list(regions)].any(axis=0) if len(regions) else np.zeros(hu.shape, bool)
    z = _best(union.sum(axis=(1, 2)))
    y = _best(union.sum(axis=(0, 2)))
    axial = overlay_rgb(window_gray(hu[z]), {REGIONS[i]: masks[i, z] for i in regions}, (sy, sx))
    coronal = overlay_rgb(window_gray(hu[::-1, y, :]), {REGIONS[i]: masks[i, ::-1, y, :] for i in regions},
                          (sz, sx))
    return {"axial": axial, "coronal": coronal}


def read_scan(volume_path, mask_path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU [z, y, x], bool masks [10, z, y, x], spacing x y z) of an ingested volume and its label file."""
    import SimpleITK as sitk

    from reg2rg.masks import unpack_label_map

    img = sitk.ReadImage(str(volume_path))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
    return sitk.GetArrayFromImage(img), unpack_label_map(label.astype(np.uint16)), tuple(img.GetSpacing())


# --------------------------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.2em 0 .4em}
.meta{color:#555;font-size:.9em} .wrap{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
.slices figure{margin:0 0 1em} .slices img{display:block;border:1px solid #999}
figcaption{font-size:.85em;color:#555} .regions{flex:1;min-width:22em}
.region{border-left:8px solid;padding:.3em .7em;margin:0 0 .7em;background:#fafafa}
.region h3{margin:0 0 .2em;font-size:1em} .region p{margin:.2em 0}
.flag{display:inline-block;background:#b00020;color:#fff;font-weight:bold;font-size:.8em;padding:.1em .5em;
border-radius:3px;margin-left:.5em} .ok{background:#2e7d32}
.legend span{display:inline-block;margin-right:1em;font-size:.85em} .sw{display:inline-block;width:.9em;height:.9em;
vertical-align:middle;margin-right:.3em} table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left} th{background:#f0f0f0}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:.3em 1em} .label{font-size:.8em;color:#555}
.plots img{max-width:46em;display:block;margin:.5em 0 1.5em;border:1px solid #ccc}
"""


def _e(text) -> str:
    return html.escape("" if text is None else str(text))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def _slices_html(slices: dict[str, np.ndarray], regions: Sequence[str]) -> str:
    legend = "".join(f"<span><i class=\"sw\" style=\"background:{color_hex(r)}\"></i>{_e(r)}</span>"
                     for r in regions)
    figs = "".join(f"<figure><img alt=\"{v} slice with region masks\" src=\"{data_uri(png_bytes(rgb))}\" "
                   f"width=\"{rgb.shape[1]}\" height=\"{rgb.shape[0]}\"><figcaption>{v} (patient's right on the "
                   f"left)</figcaption></figure>" for v, rgb in slices.items())
    return f"<div class=\"slices\">{figs}<div class=\"legend\">{legend}</div></div>"


def report_html(report: dict, slices: dict[str, np.ndarray] | None) -> str:
    """The page of one `reg2rg report` (its JSON dict) with its slices."""
    regions_drawn = [r["mask_area"] for r in report["regions"]]
    blocks = []
    for r in report["regions"]:
        c = color_hex(r["mask_area"])
        if r["grounded"]:
            flag = "<span class=\"flag ok\">grounded</span>"
        else:
            why = {"area_mismatch": f"NOT GROUNDED: named {r['named_area']!s}, mask is {r['mask_area']}",
                   "not_generated": "NOT GROUNDED: no text generated for this region",
                   "empty_text": "NOT GROUNDED: empty text"}
            flag = "".join(f"<span class=\"flag\">{_e(why.get(f, f))}</span>" for f in r["flags"])
        blocks.append(f"<div class=\"region\" style=\"border-color:{c}\" data-region=\"{_e(r['mask_area'])}\">"
                      f"<h3 style=\"color:{c}\">Region {r['index']}: {_e(r['mask_area'])}{flag}</h3>"
                      f"<p class=\"label\">model named: {_e(r['named_area'] or '(nothing)')}</p>"
                      f"<p>{_e(r['text'] or '')}</p></div>")
    extra = ""
    if report.get("unprompted"):
        extra = "<h2>Text for regions that were not in the prompt</h2>" + "".join(
            f"<p><b>{u['index']} ({_e(u['named_area'])})</b>: {_e(u['text'])}</p>" for u in report["unprompted"])
    n_bad = sum(not r["grounded"] for r in report["regions"])
    m = report["model"]
    body = (f"<h1>Region-grounded CT report: {_e(report['case']['name'])}</h1>"
            f"<p class=\"meta\">input sha256 {_e(report['case']['input_sha256'])} · model preset "
            f"{_e(m.get('preset'))} · decoding {_e(json.dumps(report['decoding'], sort_keys=True))} · "
            f"{len(report['regions'])} regions, {n_bad} not grounded · research use, not a diagnosis</p>"
            f"<div class=\"wrap\">{_slices_html(slices, regions_drawn) if slices else ''}"
            f"<div class=\"regions\">{''.join(blocks)}{extra}</div></div>"
            f"<h2>Whole report</h2><p>{_e(report['report'])}</p>")
    return _page(f"reg2rg report {report['case']['name']}", body)


# --------------------------------------------------------------------------------------------------------------
# The viewer site over test predictions
# --------------------------------------------------------------------------------------------------------------

def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(case_id)) or "case"


def case_scores(reference: str, prediction: str, regions: list, region_areas: list) -> dict:
    """Per-scan BLEU-4 and ROUGE-L (RRA prefixes stripped, as evaluate does) and region recognition."""
    from reg2rg.evaluate.text_metrics import bleu_13a, rouge_l
    from reg2rg.rra import strip_rra

    ref, gen = strip_rra(reference or ""), strip_rra(prediction or "")
    named = {}
    for p in regions or []:
        named.setdefault(int(p["index"]), p.get("named_area"))
    total = len(region_areas or [])
    correct = sum(1 for k, a in enumerate(region_areas or []) if named.get(k + 1) == a)
    return {"bleu_4": bleu_13a([gen], [ref]).bleu if ref and gen else 0.0,
            "rouge_l": rouge_l(gen, ref) if ref and gen else 0.0,
            "recognition_correct": correct, "recognition_total": total}


def _listify(v) -> list:
    if v is None:
        return []
    if isinstance(v, str):
        return json.loads(v)
    return [dict(x) if isinstance(x, dict) else x for x in list(v)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _plot_ce(metrics: dict, path: Path) -> Path | None:
    plt = _pyplot()
    per = (metrics.get("clinical_efficacy") or {}).get("per_label") or []
    if not per:
        return None
    labels = [p["label"] for p in per]
    f1 = [p["f1"] if p["f1"] is not None else 0.0 for p in per]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.barh(range(len(labels)), f1, color="#0072b2")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (generated vs reference labels)")
    ax.set_title("Clinical efficacy per label")
    return _save(fig, path)


def _plot_confusion(metrics: dict, path: Path) -> Path | None:
    plt = _pyplot()

    conf = (metrics.get("region_recognition") or {}).get("confusion") or {}
    counts = np.asarray(conf.get("counts") or [], dtype=float)
    if counts.size == 0:
        return None
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(conf["named"])), conf["named"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(conf["true"])), conf["true"], fontsize=8)
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                    color="white" if v > counts.max() / 2 else "black")
    ax.set_xlabel("area the model named")
    ax.set_ylabel("true area (mask)")
    ax.set_title("Region recognition")
    return _save(fig, path)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def findings_table_html(metrics: dict) -> str:
    """The clinical-efficacy table per finding (label): support (reference reports with it), reports the model
    gave it, precision, recall, F1. Labels neither in a reference nor in a prediction are left out; empty
    when the metrics have no clinical efficacy."""
    per = (metrics.get("clinical_efficacy") or {}).get("per_label") or []
    rows = [r for r in per if r.get("support") or r.get("predicted")]
    if not rows:
        return ""
    body = "".join(f"<tr><td>{_e(r['label'])}</td><td>{r['support']}</td><td>{r['predicted']}</td>"
                   f"<td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td><td>{_fmt(r['f1'])}</td></tr>"
                   for r in rows)
    return ("<h2>Findings</h2><table><tr><th>finding</th><th>support</th><th>predicted</th><th>precision</th>"
            f"<th>recall</th><th>F1</th></tr>{body}</table>")


def _region_rows(reference: str, prediction: str, region_areas: list) -> str:
    from reg2rg.rra import parse_rra

    ref = {p.index: p for p in parse_rra(reference or "")}
    gen = {}
    for p in parse_rra(prediction or ""):
        gen.setdefault(p.index, p)
    rows = []
    for k, area in enumerate(region_areas):
        c = color_hex(area) if area in REGION_COLORS else "#777"
        g = gen.get(k + 1)
        flag = ""
        if g is None:
            flag = "<span class=\"flag\">not generated</span>"
        elif g.area != area:
            flag = f"<span class=\"flag\">named {_e(g.area)}: not grounded</span>"
        rows.append(f"<div class=\"region\" style=\"border-color:{c}\" data-region=\"{_e(area)}\">"
                    f"<h3 style=\"color:{c}\">Region {k + 1}: {_e(area)}{flag}</h3><div class=\"cols\">"
                    f"<div><div class=\"label\">reference</div>{_e(ref[k + 1].text if k + 1 in ref else '')}</div>"
                    f"<div><div class=\"label\">generated</div>{_e(g.text if g else '')}</div></div></div>")
    if not region_areas or not (ref or gen):
        rows.append(f"<div class=\"cols\"><div><div class=\"label\">reference</div>{_e(reference)}</div>"
                    f"<div><div class=\"label\">generated</div>{_e(prediction)}</div></div>")
    return "".join(rows)


def _resolve(path, roots: Sequence[Path]) -> Path | None:
    if path is None or (isinstance(path, float) and math.isnan(path)) or str(path) == "":
        return None
    p = Path(str(path))
    if p.is_file():
        return p
    for root in roots:
        q = root / p.name if p.is_absolute() else root / p
        if q.is_file():
            return q
    return None


def build_viewer(predictions, manifest, metrics, out_dir, *, title: str | None = None) -> Path:
    """Write the static viewer site into `out_dir` (index.html, cases/{case}.html, plots/) from the predictions
    Parquet, the test manifest Parquet (ingested `volume` and `mask` per scan; scans without readable files
    get a page without slices), metrics.json and the plots beside it. Returns the index.html path."""
    import pandas as pd

    from reg2rg.errors import InputError

    predictions, manifest, metrics_path, out = Path(predictions), Path(manifest), Path(metrics), Path(out_dir)
    for p in (predictions, manifest, metrics_path):
        if not p.is_file():
            raise InputError(p, "not found")
    df = pd.read_parquet(predictions)
    if "case_id" not in df.columns:
        raise InputError(predictions, "no case_id column: not a predictions table")
    man = pd.read_parquet(manifest)
    files = {r["case_id"]: (r.get("volume"), r.get("mask")) for r in man.to_dict("records")}
    try:
        met = json.loads(metrics_path.read_text())
    except ValueError as err:
        raise InputError(metrics_path, f"not valid JSON: {err}") from err
    roots = [manifest.resolve().parent.parent, Path.cwd()]

    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    (out / "plots").mkdir()
    plots = []
    lengths_plot = (met.get("lengths") or {}).get("plot")
    if lengths_plot and (metrics_path.parent / lengths_plot).is_file():
        shutil.copyfile(metrics_path.parent / lengths_plot, out / "plots" / "report_lengths.png")
        plots.append(("Report length distributions (words)", "plots/report_lengths.png"))
    if _plot_ce(met, out / "plots" / "clinical_efficacy.png"):
        plots.append(("Clinical efficacy per label (F1)", "plots/clinical_efficacy.png"))
    if _plot_confusion(met, out / "plots" / "recognition_confusion.png"):
        plots.append(("Region recognition confusion matrix", "plots/recognition_confusion.png"))

    rows, used = [], set()
    for rec in df.to_dict("records"):
        case = str(rec["case_id"])
        name = _safe_name(case)
        while name in used:
            name += "_"
        used.add(name)
        areas = [str(a) for a in _listify(rec.get("region_areas"))]
        s = case_scores(rec.get("reference"), rec.get("prediction"), _listify(rec.get("regions")), areas)
        volume, mask = files.get(case, (None, None))
        volume, mask = _resolve(volume, roots), _resolve(mask, roots)
        slices_html = "<p class=\"meta\">(no ingested volume or masks found for this scan)</p>"
        if volume is not None and mask is not None:
            try:
                hu, masks, spacing = read_scan(volume, mask)
                idx = [REGIONS.index(a) for a in areas if a in REGIONS] or None
                sl = case_slices(hu, masks, spacing, idx)
                drawn = [REGIONS[i] for i in (idx or range(len(REGIONS))) if masks[i].any()]
                slices_html = _slices_html(sl, drawn)
            except Exception as err:  # a broken file costs the pictures, not the site
                log.warning("viewer: %s: slices not drawn: %s", case, err)
        body = (f"<p><a href=\"../index.html\">&larr; all cases</a></p><h1>{_e(case)}</h1>"
                f"<p class=\"meta\">BLEU-4 {_fmt(s['bleu_4'])} · ROUGE-L {_fmt(s['rouge_l'])} · regions "
                f"recognised {s['recognition_correct']}/{s['recognition_total']}</p>"
                f"<div class=\"wrap\">{slices_html}<div class=\"regions\">"
                f"{_region_rows(rec.get('reference'), rec.get('prediction'), areas)}</div></div>")
        (out / "cases" / f"{name}.html").write_text(_page(case, body))
        rows.append(f"<tr><td><a href=\"cases/{_e(name)}.html\">{_e(case)}</a></td><td>{_fmt(s['bleu_4'])}</td>"
                    f"<td>{_fmt(s['rouge_l'])}</td><td>{s['recognition_correct']}/{s['recognition_total']}</td></tr>")

    rr = met.get("region_recognition") or {}
    ce = (met.get("clinical_efficacy") or {}).get("micro") or {}
    chance = (met.get("clinical_efficacy") or {}).get("chance_micro_f1")
    summary = (f"<p class=\"meta\">{met.get('n_scans', len(df))} scans · model preset {_e(met.get('model_preset'))}"
               f" · recognition accuracy {_fmt(rr.get('accuracy'))} · CE micro F1 {_fmt(ce.get('f1'))}"
               f" (chance level {_fmt(chance)})</p>")
    plots_html = "".join(f"<h3>{_e(t)}</h3><img src=\"{p}\" alt=\"{_e(t)}\">" for t, p in plots)
    name = title or f"reg2rg test predictions: {met.get('dataset') or ''}"
    body = (f"<h1>{_e(name)}</h1>{summary}<h2>Cases</h2><table><tr><th>case</th><th>BLEU-4</th><th>ROUGE-L</th>"
            f"<th>regions recognised</th></tr>{''.join(rows)}</table>{findings_table_html(met)}<h2>Metrics</h2>"
            f"<div class=\"plots\">{plots_html}</div>")
    index = out / "index.html"
    index.write_text(_page(name, body))
    log.info("viewer: %d cases, %d plots -> %s", len(rows), len(plots), index)
    return index
