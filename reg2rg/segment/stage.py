"""The segmentation stage over an inventory: prepare SAT's input for every ingested scan, and import SAT's
(or the stand-in's) output for every prepared scan. Every inventory scan gets a status row
(`case_id, status, reason`); a scan that fails is recorded and the others go on."""
from __future__ import annotations

import logging
from pathlib import Path

from reg2rg.errors import InputError
from reg2rg.segment import sat

log = logging.getLogger(__name__)


def _intensity_mode(inv_row) -> str:
    mode = getattr(inv_row, "intensity_mode", None)
    return mode if isinstance(mode, str) and mode else "hu"


def prepare_case(volume_path, out_dir, case_id, intensity_mode, window):
    out_dir = Path(out_dir)
    return sat.prepare_sat_input(volume_path, out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}.json", case_id,
                                 intensity_mode=intensity_mode, window=window)


def prepare_inventory(inventory, volume_status, volumes_dir, out_dir, jsonl_path, prompts: dict | None = None,
                      sat_dataset: str = "reg2rg", window: dict | None = None, threads: int = 1):
    """SAT input (`{out_dir}/{case_id}.nii.gz` + `.json` record) for every ingested scan, and SAT's jsonl
    (absolute image paths, all prompts of the region mapping). Returns the status table."""
    import json

    from reg2rg.per_scan import ready_after, run_per_case

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = sat.all_prompts(sat.region_prompts(prompts))
    ready, skipped = ready_after(inventory, volume_status, "not ingested")
    jobs = []
    for inv in ready:
        jobs.append((inv.case_id, {"volume_path": Path(volumes_dir) / f"{inv.case_id}.nii.gz", "out_dir": out_dir,
                                   "case_id": inv.case_id, "intensity_mode": _intensity_mode(inv),
                                   "window": window}))
    status = run_per_case(prepare_case, jobs, threads=threads, desc="SAT input", not_run=skipped)
    empty = []
    for r in status.itertuples():
        if r.status == "ok" and json.loads((out_dir / f"{r.case_id}.json").read_text()).get("empty_foreground"):
            empty.append(r.case_id)
    if empty:
        status.loc[status.case_id.isin(empty), ["status", "reason"]] = [
            "error", "no voxel above 0 HU: SAT's foreground crop would be empty"]
    lines = [sat.jsonl_line(r.case_id, out_dir / f"{r.case_id}.nii.gz", labels, sat_dataset)
             for r in status.itertuples() if r.status == "ok"]
    Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
    Path(jsonl_path).write_text("".join(line + "\n" for line in lines))
    log.info("SAT jsonl %s: %d scans, %d prompts each", jsonl_path, len(lines), len(labels))
    return status


def import_case(volume_path, sat_dir, record_path, prompts, out_path, work_dir, standin: dict | None = None,
                derive: tuple[str, ...] | None = None, pleura_margin_mm: float | None = None):
    import json

    if not Path(record_path).is_file():
        raise InputError(record_path, "no SAT input record for this scan")
    if standin is not None:  # files made in place of a SAT run: were they made for this very input?
        rec = json.loads(Path(record_path).read_text())
        if not standin:
            raise InputError(sat_dir, f"the stand-in for a SAT run has no output for {rec['case_id']}")
        if rec["crop"]["start"] != standin["crop"]["start"] or rec["crop"]["end"] != standin["crop"]["end"] \
                or rec["sat_input"]["shape_ras"] != standin["shape_ras"]:
            raise InputError(sat_dir, f"the stand-in SAT output of {rec['case_id']} was made for another SAT input "
                                      f"(crop {standin['crop']['start']}..{standin['crop']['end']} of "
                                      f"{standin['shape_ras']}, ours {rec['crop']['start']}..{rec['crop']['end']} of "
                                      f"{rec['sat_input']['shape_ras']}); the demo's stand-in assumes ingestion at "
                                      f"{standin.get('spacing')} mm")
    side = sat.import_sat_case(volume_path, sat_dir, record_path, prompts, out_path, work_dir, derive=derive,
                               pleura_margin_mm=pleura_margin_mm)
    if standin is not None:
        from reg2rg.masks import sidecar_path

        side["segmentation"]["backend"] = "sat_standin"
        sat._write_json(side, sidecar_path(out_path))
    return side


def import_inventory(inventory, prepare_status, volumes_dir, records_dir, sat_dir, out_dir, work_dir,
                     prompts: dict | None = None, threads: int = 1, standin_index=None,
                     pleura_margin_mm: float | None = None):
    """Import SAT's output (`{sat_dir}/seg_{case_id}/`) of every prepared scan into `{out_dir}/{case_id}.nii.gz`
    (the masks stage's format); regions without prompts in DERIVED_REGIONS (the pleura) are derived from the
    lung masks, within `pleura_margin_mm` of it (None: reg2rg.segment.derived.PLEURA_MARGIN_MM). Returns
    `case_id, status, reason` for every inventory scan. `standin_index`: the demo's standin.json (stand-in files
    are checked against our SAT input before import)."""
    import json

    from reg2rg.per_scan import ready_after, run_per_case

    mapping = sat.region_prompts(prompts)
    derive = sat.derived_regions(prompts)  # the pleura, unless the config gives its prompts
    standin = json.loads(Path(standin_index).read_text()) if standin_index else None
    ready, skipped = ready_after(inventory, prepare_status, "not prepared for SAT", pass_on=True)
    jobs = []
    for inv in ready:
        jobs.append((inv.case_id, {"volume_path": Path(volumes_dir) / f"{inv.case_id}.nii.gz", "sat_dir": Path(sat_dir),
                                   "record_path": Path(records_dir) / f"{inv.case_id}.json", "prompts": mapping,
                                   "out_path": Path(out_dir) / f"{inv.case_id}.nii.gz",
                                   "work_dir": Path(work_dir) / inv.case_id, "derive": derive,
                                   "pleura_margin_mm": pleura_margin_mm,
                                   "standin": None if standin is None else standin.get(inv.case_id, {})}))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return run_per_case(import_case, jobs, threads=threads, desc="SAT import", not_run=skipped)
