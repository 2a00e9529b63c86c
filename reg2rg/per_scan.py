"""Run one per-scan function over many scans: a process pool, a progress bar, and a status row per scan.

A scan that fails is recorded with its reason and the run goes on; nothing is dropped silently.
"""
from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


def _one_thread_per_worker() -> None:
    """Pool workers share the cores: each runs ITK (SimpleITK) and torch on one thread."""
    import os

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except ImportError:
        pass


def _run_one(func: Callable[..., Any], case_id: str, kwargs: dict) -> dict:
    from reg2rg.errors import Reg2RGError

    try:
        func(**kwargs)
    except Reg2RGError as err:
        return {"case_id": case_id, "status": "error", "reason": str(err)}
    except Exception as err:  # a bug or a library failure on one scan must not stop the others
        log.exception("unexpected failure on scan %s", case_id)
        return {"case_id": case_id, "status": "error", "reason": f"{type(err).__name__}: {err}"}
    return {"case_id": case_id, "status": "ok", "reason": ""}


def ready_after(inventory, stage_status, not_ready: str, *, pass_on: bool = False) -> tuple[list, list[dict]]:
    """Split an inventory by an earlier stage's status table (`case_id, status, reason`): the inventory rows
    (itertuples) of the scans it made (`ok`), and a row for run_per_case's `not_run` for every other scan:
    `skipped` with reason `not_ready`, or with `pass_on` the earlier stage's own status (`skipped`, else `error`)
    and reason for a scan the table holds (`not_ready` only for one it lacks)."""
    earlier = {r.case_id: (r.status, r.reason) for r in stage_status.itertuples()}
    ready, skipped = [], []
    for inv in inventory.itertuples():
        status, reason = earlier.get(inv.case_id, (None, None))
        if status == "ok":
            ready.append(inv)
        elif pass_on and status is not None:
            skipped.append({"case_id": inv.case_id, "status": "skipped" if status == "skipped" else "error",
                            "reason": reason})
        else:
            skipped.append({"case_id": inv.case_id, "status": "skipped", "reason": not_ready})
    return ready, skipped


def run_per_case(func: Callable[..., Any], jobs: Iterable[tuple[str, dict]], threads: int = 1,
                 desc: str = "scans", not_run: Iterable[dict] = ()):
    """Call func(**kwargs) for each (case_id, kwargs); return a DataFrame `case_id, status, reason`, sorted
    by case_id, that also holds the `not_run` rows (scans an earlier stage did not make: `case_id, status,
    reason`, status `skipped` or `error`), so that every scan of the stage has its row.

    `func` must be importable at module level (it is sent to worker processes).
    """
    import pandas as pd
    from tqdm import tqdm

    jobs = list(jobs)
    rows = []
    if threads <= 1 or len(jobs) <= 1:
        for case_id, kwargs in tqdm(jobs, desc=desc, unit="scan"):
            rows.append(_run_one(func, case_id, kwargs))
    else:
        with ProcessPoolExecutor(max_workers=threads, initializer=_one_thread_per_worker) as pool:
            futures = [pool.submit(_run_one, func, case_id, kwargs) for case_id, kwargs in jobs]
            for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="scan"):
                rows.append(fut.result())
    status = pd.DataFrame(rows, columns=["case_id", "status", "reason"])
    failed = status[status.status != "ok"]
    for row in failed.itertuples():
        log.warning("%s %s: %s", desc, row.case_id, row.reason)
    log.info("%s: %d ok, %d failed", desc, len(status) - len(failed), len(failed))
    not_run = list(not_run)
    if not_run:
        status = pd.concat([status, pd.DataFrame(not_run, columns=status.columns)], ignore_index=True)
    return status.sort_values("case_id").reset_index(drop=True)
