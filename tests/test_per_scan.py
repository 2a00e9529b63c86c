"""reg2rg.per_scan: which scans a stage runs after an earlier one (ready_after), and a status row for every scan
(run_per_case), in one process and in a pool, with failures recorded and not raised."""
from __future__ import annotations

import pandas as pd
import pytest

from reg2rg.errors import InputError
from reg2rg.per_scan import ready_after, run_per_case

INVENTORY = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "path": ["a.nii", "b.nii", "c.nii", "d.nii"]})
EARLIER = pd.DataFrame({"case_id": ["a", "b", "c"], "status": ["ok", "error", "skipped"],
                        "reason": ["", "truncated file", "not ingested"]})


def test_ready_after_marks_every_other_scan_not_ready():
    ready, not_run = ready_after(INVENTORY, EARLIER, "not ingested")
    assert [r.case_id for r in ready] == ["a"] and ready[0].path == "a.nii"
    assert not_run == [{"case_id": c, "status": "skipped", "reason": "not ingested"} for c in ("b", "c", "d")]


def test_ready_after_passes_on_the_earlier_stages_status_and_reason():
    ready, not_run = ready_after(INVENTORY, EARLIER, "not prepared for SAT", pass_on=True)
    assert [r.case_id for r in ready] == ["a"]
    assert not_run == [{"case_id": "b", "status": "error", "reason": "truncated file"},
                       {"case_id": "c", "status": "skipped", "reason": "not ingested"},
                       {"case_id": "d", "status": "skipped", "reason": "not prepared for SAT"}]


def scan_job(case_id: str, fail: str | None = None) -> None:  # module level: sent to pool workers
    if fail == "input":
        raise InputError(f"{case_id}.nii", "not a volume")
    if fail == "bug":
        raise ZeroDivisionError("division by zero")


@pytest.mark.parametrize("threads", [1, 2])
def test_run_per_case_has_a_row_for_every_scan(threads):
    jobs = [("c2", {"case_id": "c2", "fail": "bug"}), ("c1", {"case_id": "c1", "fail": "input"}),
            ("c0", {"case_id": "c0"})]
    status = run_per_case(scan_job, jobs, threads=threads,
                          not_run=[{"case_id": "c3", "status": "skipped", "reason": "not ingested"}])
    assert status.to_dict("records") == [
        {"case_id": "c0", "status": "ok", "reason": ""},
        {"case_id": "c1", "status": "error", "reason": "c1.nii: not a volume"},
        {"case_id": "c2", "status": "error", "reason": "ZeroDivisionError: division by zero"},
        {"case_id": "c3", "status": "skipped", "reason": "not ingested"}]
