"""Region reports: RadGenome-ChestCT's `{train,validation}_region_report.csv` to one row per scan with the
whole report and one text per region (REGIONS order), stored as Parquet.

Input CSV columns: `Volumename,Anatomy,Sentence`. Anatomy is empty for the whole-report row, a top-level
region name, or a `/`-joined deeper path (`lung/lung/right lung`) that belongs to its first element.

Output columns (one row per scan, in order of first appearance):
    case_id       str         Volumename without `.nii.gz`
    report        str         the whole report (its row); if absent, the region sentences joined (see problems)
    region_texts  list[str|None] of 10, REGIONS order: the region's sentences joined with a space, in file
                  order; None where the region has no text
    problems      list[str]   what was wrong for this scan; rows are numbered from 1, the header not counted:
                  "row N: unknown region 'X' (anatomy 'X/...')"   a sentence that belongs to no region (kept
                                                                   out of region_texts; the scan must not be
                                                                   used as if complete)
                  "no whole-report row; report joined from the region sentences"
                  "rows N, M: K whole-report rows; joined"
                  "no text"                                        no non-empty sentence at all
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from reg2rg.constants import REGIONS
from reg2rg.errors import InputError
from reg2rg.files import atomic_path

log = logging.getLogger(__name__)

CSV_COLUMNS = ("Volumename", "Anatomy", "Sentence")
OUTPUT_COLUMNS = ("case_id", "report", "region_texts", "problems")

PROBLEM_UNKNOWN_REGION = "unknown region"
PROBLEM_NO_WHOLE_REPORT = "no whole-report row; report joined from the region sentences"
PROBLEM_NO_TEXT = "no text"

_REGION_LOOKUP = {r: i for i, r in enumerate(REGIONS)}


def case_id_from_volumename(name: str) -> str:
    """`train_10019_a_1.nii.gz` -> `train_10019_a_1` (also strips `.nii`)."""
    name = name.strip()
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _read_csv(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise InputError(csv_path, "region report CSV not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except pd.errors.EmptyDataError as err:
        raise InputError(csv_path, f"empty file; expected the header {','.join(CSV_COLUMNS)}") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(csv_path, f"not a readable CSV: {' '.join(str(err).split())}") from err
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            csv_path,
            f"missing column(s) {', '.join(missing)}; expected the header {','.join(CSV_COLUMNS)}, "
            f"found {','.join(df.columns)}",
        )
    extra = [c for c in df.columns if c not in CSV_COLUMNS]
    if extra:
        log.warning("%s: ignoring extra column(s) %s", csv_path, ", ".join(extra))
    return df[list(CSV_COLUMNS)]


def _fold_region(sentences: list[str]) -> str | None:
    """One text for a region from its rows (top-level and deeper paths like `lung/lung/right lung`), in
    their original order. RadGenome's deeper rows repeat parts of the region's text at a finer granularity:
    a row already contained in the text is not repeated, and a row that contains earlier rows replaces them."""
    parts: list[str] = []
    for sentence in sentences:
        if any(sentence in p for p in parts):
            continue
        covered = [k for k, p in enumerate(parts) if p in sentence]
        if covered:
            parts = parts[: covered[0]] + [sentence] + [p for k, p in enumerate(parts) if k > covered[0] and k not in covered]
        else:
            parts.append(sentence)
    return " ".join(parts) if parts else None


def read_radgenome_region_reports(csv_path: str | Path) -> pd.DataFrame:
    """Read a RadGenome region report CSV into one row per scan (see the module docstring for the columns).

    Raises InputError naming the file when it is missing, unreadable or lacks one of the columns
    Volumename, Anatomy, Sentence. Problems of single rows (an unknown region) are recorded per scan in
    `problems`, never raised and never dropped silently."""
    csv_path = Path(csv_path)
    df = _read_csv(csv_path)

    cases: dict[str, dict] = {}
    for n, (volume, anatomy, sentence) in enumerate(
        zip(df["Volumename"].tolist(), df["Anatomy"].tolist(), df["Sentence"].tolist()), start=1
    ):
        case_id = case_id_from_volumename(volume)
        if not case_id:
            log.warning("%s: row %d has no Volumename; skipped (anatomy %r)", csv_path, n, anatomy)
            continue
        c = cases.get(case_id)
        if c is None:
            c = cases[case_id] = {"whole": [], "whole_rows": [], "regions": [[] for _ in REGIONS],
                                  "problems": []}
        sentence = sentence.strip()
        anatomy = anatomy.strip()
        if not anatomy:
            c["whole_rows"].append(n)
            if sentence:
                c["whole"].append(sentence)
            continue
        top = anatomy.split("/", 1)[0].strip().lower()
        i = _REGION_LOOKUP.get(top)
        if i is None:
            detail = f" (anatomy {anatomy!r})" if "/" in anatomy else ""
            c["problems"].append(f"row {n}: {PROBLEM_UNKNOWN_REGION} {top!r}{detail}")
            continue
        if sentence:
            c["regions"][i].append(sentence)

    rows = []
    for case_id, c in cases.items():
        problems = list(c["problems"])
        region_texts = [_fold_region(sentences) for sentences in c["regions"]]
        if len(c["whole_rows"]) > 1:
            problems.append(f"rows {', '.join(map(str, c['whole_rows']))}: "
                            f"{len(c['whole_rows'])} whole-report rows; joined")
        if c["whole"]:
            report = " ".join(c["whole"])
        else:
            report = " ".join(t for t in region_texts if t)
            problems.append(PROBLEM_NO_WHOLE_REPORT)
            if not report:
                problems.append(PROBLEM_NO_TEXT)
        rows.append({"case_id": case_id, "report": report, "region_texts": region_texts, "problems": problems})

    out = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    n_bad = sum(1 for r in rows if r["problems"])
    log.info("%s: %d rows, %d scans, %d with problems", csv_path, len(df), len(out), n_bad)
    return out


def inventory_reports(inventory, source_root) -> pd.DataFrame:
    """Region reports of every report CSV the inventory names (column `report_csv`, relative to
    `source_root`, the data set root; RadGenome format), one table. Rows of scans that are not in the
    inventory are kept (the manifest reports them as orphans); a scan found in two CSVs keeps its first row
    and gets a problem naming the other file (by its path under the root)."""
    from reg2rg.layouts.common import source_path

    paths = sorted({str(p) for p in inventory["report_csv"].tolist() if p is not None and not pd.isna(p)})
    frames = []
    for p in paths:
        df = read_radgenome_region_reports(source_path(source_root, p))
        df["_source"] = p
        frames.append(df)
    if not frames:
        log.warning("the inventory names no report CSV: no region reports")
        return pd.DataFrame({c: pd.Series(dtype=object) for c in OUTPUT_COLUMNS})
    allr = pd.concat(frames, ignore_index=True)
    dup = allr["case_id"].duplicated(keep="first")
    if dup.any():
        first = allr[~dup].set_index("case_id")
        for case_id, src in zip(allr.loc[dup, "case_id"], allr.loc[dup, "_source"]):
            log.warning("scan %s occurs in %s and %s; the first is used", case_id, first.at[case_id, "_source"], src)
            first.at[case_id, "problems"] = list(first.at[case_id, "problems"]) + [f"also in {src}"]
        allr = first.reset_index()
    return allr[list(OUTPUT_COLUMNS)].reset_index(drop=True)


def _fields() -> list:
    import pyarrow as pa

    return [
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("report", pa.string()),
        pa.field("region_texts", pa.list_(pa.string())),
        pa.field("problems", pa.list_(pa.string())),
    ]


def write_region_reports(df: pd.DataFrame, path: str | Path) -> None:
    """Write the table of read_radgenome_region_reports to Parquet (region_texts and problems as
    list<string>). Extra columns are kept with inferred types. Written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    missing = [c for c in OUTPUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"write_region_reports: missing column(s) {', '.join(missing)}")
    bad = [cid for cid, t in zip(df["case_id"], df["region_texts"]) if len(t) != len(REGIONS)]
    if bad:
        raise ValueError(f"write_region_reports: region_texts must have {len(REGIONS)} entries; "
                         f"cases {', '.join(map(str, bad[:5]))} do not")
    fields = _fields()
    arrays = [
        pa.array(df["case_id"].astype(str).tolist(), pa.string()),
        pa.array([None if r is None else str(r) for r in df["report"].tolist()], pa.string()),
        pa.array([list(t) for t in df["region_texts"].tolist()], pa.list_(pa.string())),
        pa.array([list(p) if p is not None else [] for p in df["problems"].tolist()], pa.list_(pa.string())),
    ]
    extra = [c for c in df.columns if c not in OUTPUT_COLUMNS]
    for c in extra:
        arr = pa.array(df[c])
        fields.append(pa.field(str(c), arr.type))
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_region_reports(path: str | Path) -> pd.DataFrame:
    """Read a Parquet file written by write_region_reports; list columns come back as Python lists
    (None inside region_texts where a region has no text). Raises InputError if the file is unreadable or
    lacks a column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "region report table not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, f"not a readable Parquet file: {err}") from err
    missing = [c for c in OUTPUT_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    df = pd.DataFrame({c: table.column(c).to_pylist() for c in table.column_names})
    bad = [cid for cid, t in zip(df["case_id"], df["region_texts"]) if t is None or len(t) != len(REGIONS)]
    if bad:
        raise InputError(path, f"region_texts must have {len(REGIONS)} entries; cases "
                               f"{', '.join(map(str, bad[:5]))} do not")
    return df
