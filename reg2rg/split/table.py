"""Split a table of whole reports into the region report table of `reg2rg.region_reports`
(`case_id, report, region_texts, problems`) plus `others`, `split_status` and `splitter` columns.

`split_status` (SPLIT_STATUSES), one per report:
    ok               split, at least one sentence in a region
    no_region_text   split, but no sentence belongs to any region (all in `others`): region texts all None and
                     the problem "no region text: ..."; the manifest then excludes the scan
    empty            no report text: the problem "no text"
    failed           could not be split: region texts all None, the problem "split failed: <reason>"; its raw
                     answer goes to the failures table. Never passed off as a report with empty regions.
Report ids must be unique: a table with an id twice is refused before anything is split.
"""
from __future__ import annotations

import json
import logging

from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError, check_unique_ids
from reg2rg.region_reports import PROBLEM_NO_TEXT

log = logging.getLogger(__name__)

PROBLEM_SPLIT_FAILED = "split failed"
PROBLEM_NO_REGION_TEXT = "no region text: no sentence of the report belongs to a region"
SPLIT_STATUSES = ("ok", "no_region_text", "empty", "failed")
FAILURE_COLUMNS = ["case_id", "reason", "raw", "attempts", "errors"]


def make_splitter(kind: str, llm: dict | None = None, cache_dir=None, retry_failed: bool = True):
    """`rules` or `llm` (settings: reg2rg.split.llm.LLMSettings fields)."""
    if kind == "rules":
        return None
    if kind == "llm":
        from reg2rg.split.llm import LLMSettings, LLMSplitter

        return LLMSplitter(LLMSettings.from_config(llm), cache=cache_dir, retry_failed=retry_failed)
    raise ConfigError(f"unknown splitter {kind!r}; use rules or llm")


def split_report_table(reports, kind: str = "rules", llm: dict | None = None, cache_dir=None,
                       retry_failed: bool = True, splitter=None, progress: bool = True, source="<reports>"):
    """reports: DataFrame with `case_id, report` (`source`: the file it came from, named in errors). Returns
    (region table, failures table)."""
    import pandas as pd

    from reg2rg.split.rules import RULES_VERSION, rules_split

    missing = [c for c in ("case_id", "report") if c not in reports.columns]
    if missing:
        raise ValueError(f"split_report_table: missing column(s) {', '.join(missing)}")
    check_unique_ids(reports["case_id"], source)
    texts = ["" if r is None or (isinstance(r, float) and r != r) else str(r) for r in reports["report"]]
    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    results: dict[int, dict] = {}
    if kind == "rules":
        name = RULES_VERSION
        for i in nonempty:
            results[i] = {"status": "ok", "split": rules_split(texts[i]).to_json()}
    else:
        splitter = splitter or make_splitter(kind, llm, cache_dir, retry_failed)
        from reg2rg.split.prompt import PROMPT_VERSION

        name = f"llm:{splitter.settings.model}:{PROMPT_VERSION}"
        records = splitter.split_many([texts[i] for i in nonempty], progress=progress)
        for i, rec in zip(nonempty, records):
            results[i] = rec.to_json()
    rows, failures = [], []
    for i, case_id in enumerate(reports["case_id"]):
        row = {"case_id": str(case_id), "report": texts[i] or None, "region_texts": [None] * len(REGIONS),
               "problems": [], "others": [], "split_status": "ok", "splitter": name}
        res = results.get(i)
        if res is None:
            row["problems"].append(PROBLEM_NO_TEXT)
            row["split_status"] = "empty"
        elif res["status"] == "ok":
            row["region_texts"] = list(res["split"]["region_texts"])
            row["others"] = list(res["split"]["others"])
            if all(t is None or not str(t).strip() for t in row["region_texts"]):
                row["split_status"] = "no_region_text"
                row["problems"].append(PROBLEM_NO_REGION_TEXT)
        else:
            row["split_status"] = "failed"
            row["problems"].append(f"{PROBLEM_SPLIT_FAILED}: {res['reason']}")
            failures.append({"case_id": str(case_id), "reason": res["reason"], "raw": res.get("raw"),
                             "attempts": int(res.get("attempts") or 0),
                             "errors": json.dumps(res.get("errors") or [], ensure_ascii=False)})
        rows.append(row)
    table = pd.DataFrame(rows, columns=["case_id", "report", "region_texts", "problems", "others", "split_status",
                                        "splitter"])
    fails = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    log.info("split %d reports with %s: %s", len(table), name, split_summary(table))
    return table, fails


def split_summary(table) -> str:
    """How many reports have each split status, e.g. "3 ok, 1 no_region_text, 0 empty, 0 failed"."""
    counts = table["split_status"].value_counts()
    return ", ".join(f"{int(counts.get(s, 0))} {s}" for s in SPLIT_STATUSES)


def read_report_input(path, id_column: str | None = None, text_column: str | None = None):
    """Whole reports from a CTRG annotation JSON, a CSV or a Parquet file -> DataFrame `case_id, report`."""
    import pandas as pd

    from reg2rg.errors import InputError

    path_s = str(path)
    if path_s.endswith(".json"):
        from reg2rg.layouts.ctrg import read_annotation

        ann = read_annotation(path)
        return ann[["case_id", "report"]].reset_index(drop=True)
    if path_s.endswith(".parquet"):
        df = pd.read_parquet(path)
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError) as err:
            raise InputError(path, f"not a readable CSV: {err}") from None
    idc = id_column or next((c for c in ("case_id", "id", "AccessionNo", "VolumeName") if c in df.columns), None)
    txc = text_column or next((c for c in ("report", "report_text", "Findings_EN") if c in df.columns), None)
    if idc not in df.columns or txc not in df.columns:
        raise InputError(path, f"needs an id and a report column (found {', '.join(map(str, df.columns))}); "
                               "name them with --id-column / --text-column")
    return pd.DataFrame({"case_id": df[idc].astype(str), "report": df[txc]})


def cli(args) -> int:
    """`reg2rg split-reports`."""
    from pathlib import Path

    from reg2rg.region_reports import write_region_reports

    reports = read_report_input(args.input, args.id_column, args.text_column)
    llm = {k: v for k, v in {
        "base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env,
        "concurrency": args.concurrency, "timeout_s": args.timeout, "max_attempts": args.max_attempts,
        "structured_output": args.structured_output}.items() if v is not None}

    def run():
        return split_report_table(reports, args.splitter, llm=llm, cache_dir=args.cache,
                                  retry_failed=not args.no_retry_failed, source=args.input)

    if args.splitter == "llm" and args.serve_model:
        from reg2rg.split.serve import managed_server, vllm_command

        port = args.serve_port
        llm.setdefault("base_url", f"http://127.0.0.1:{port}/v1")
        llm.setdefault("model", args.model or Path(args.serve_model).name)
        cmd = vllm_command(args.serve_model, port, served_model_name=llm["model"])
        with managed_server(cmd, llm["base_url"], log_path=args.serve_log):
            table, failures = run()
    else:
        table, failures = run()
    write_region_reports(table, args.output)
    if args.failures:
        Path(args.failures).parent.mkdir(parents=True, exist_ok=True)
        if str(args.failures).endswith(".parquet"):
            failures.to_parquet(args.failures, index=False)
        else:
            failures.to_csv(args.failures, index=False)
    log.info("wrote %s (%d reports: %s)", args.output, len(table), split_summary(table))
    return 1 if len(failures) and args.fail_on_error else 0
