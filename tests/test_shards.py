"""Per-scan work as jobs (reg2rg.shards and the workflow's shard rules): the plan, the digest that decides
which shards rerun, the gather, and the workflow run locally with shards against one without."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from reg2rg import shards
from workflow_runs import file_digests, jobs_run, manifests, snakemake, workflow_copy

def test_plan_cuts_sorted_ids_into_runs_of_the_shard_size():
    ids = [f"case_{i:03d}" for i in (5, 1, 3, 2, 4, 0, 6)]
    plan = shards.plan_shards(ids, 3)
    assert plan == {"00000": ["case_000", "case_001", "case_002"], "00001": ["case_003", "case_004", "case_005"],
                    "00002": ["case_006"]}
    assert shards.plan_shards(ids, None) == {"00000": sorted(ids)}
    assert shards.plan_shards(ids, 100) == {"00000": sorted(ids)}
    assert shards.plan_shards([], 10) == {"00000": []}
    # adding scans after the last id leaves the earlier shards as they were
    more = shards.plan_shards(ids + ["case_007", "case_008"], 3)
    assert more["00000"] == plan["00000"] and more["00001"] == plan["00001"] and more["00002"] != plan["00002"]
    with pytest.raises(ValueError, match="twice"):
        shards.plan_shards(["a", "a"], 1)
    with pytest.raises(ValueError, match="scans_per_job"):
        shards.plan_shards(["a"], -1)


def test_paper_scale_plan():
    ids = [f"train_{i}_a_1" for i in range(25_000)]
    plan = shards.plan_shards(ids, 500)
    assert len(plan) == 50 and all(len(v) == 500 for v in plan.values())
    assert sorted(sum(plan.values(), [])) == sorted(ids)


def test_digest_changes_with_the_shards_rows_only():
    table = pd.DataFrame({"case_id": ["a", "b", "c"], "image": ["/x/a", "/x/b", "/x/c"], "n": [1, 2, None]})
    d_ab = shards.rows_digest(table, ["a", "b"])
    changed = table.copy()
    changed.loc[2, "image"] = "/y/c"
    assert shards.rows_digest(changed, ["a", "b"]) == d_ab  # c is not in the shard
    changed.loc[0, "image"] = "/y/a"
    assert shards.rows_digest(changed, ["a", "b"]) != d_ab
    assert shards.rows_digest(table, ["a", "b"], extra={"a": [1, 2]}) != d_ab
    assert shards.rows_digest(table.iloc[::-1], ["a", "b"]) == d_ab  # the table's row order does not matter


def test_gather_sorts_and_refuses_a_scan_in_two_shards():
    one = pd.DataFrame({"case_id": ["c", "a"], "status": ["ok", "error"], "reason": ["", "bad"]})
    two = pd.DataFrame({"case_id": ["b"], "status": ["ok"], "reason": [""]})
    empty = one.iloc[0:0]
    out = shards.gather([one, empty, two])
    assert list(out.case_id) == ["a", "b", "c"] and list(out.status) == ["error", "ok", "ok"]
    assert shards.gather([empty]).empty
    with pytest.raises(ValueError, match="more than one shard"):
        shards.gather([one, one])
    with pytest.raises(ValueError, match="not in the table"):
        shards.select_cases(one, ["a", "z"])


# ---- The workflow with shards ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_stages_equal_the_unsharded_run_and_rerun_only_changed_shards(tmp_path):
    """The demo's per-scan stages at 4 scans per job against one job per stage: identical manifests and cache
    files. Then a user's data set gains scans: after the inventory is made again, only the shards whose scans
    changed run; a shard whose status file is lost reruns alone and skips its finished scans."""
    from reg2rg import demo

    targets = ["results/mine/manifest/train.parquet", "results/mine/manifest/test.parquet",
               "results/mine/cache/train.parquet", "results/mine/cache/test.parquet"]
    root = tmp_path / "download"
    demo.make_demo_dataset("radgenome", root, cases=10, seed=3, shape=[112, 96, 32])
    valid = sorted(p for p in (root / "valid_preprocessed").iterdir())
    held_back = tmp_path / "held_back"
    shutil.move(str(valid[-1]), held_back)  # the last scan id of the data set arrives later

    def config(per_job):
        return {"datasets": {"mine": {"layout": "radgenome", "root": str(root), "spacing": [1.0, 1.0, 3.0],
                                      "model_preset": "tiny"}},
                "sharding": {"scans_per_job": per_job}}

    whole = workflow_copy(tmp_path / "whole", config(None))
    sharded = workflow_copy(tmp_path / "sharded", config(4))
    snakemake(whole, *targets, "--cores", "2")
    first = snakemake(sharded, *targets, "--cores", "2")
    assert jobs_run(first)["ingest_shard"] == 3 and jobs_run(first)["masks_shard"] == 3  # 9 scans

    pd.testing.assert_frame_equal(manifests(whole / "results/mine"),
                                  manifests(sharded / "results/mine"))
    for pattern in ("volumes/*.nii.gz", "masks/*.nii.gz", "cache/*.safetensors"):
        a, b = file_digests(whole / "results/mine", pattern), file_digests(sharded / "results/mine", pattern)
        assert a and a == b, pattern
    for split in ("train", "test"):
        a = pd.read_parquet(whole / f"results/mine/cache/{split}.parquet").drop(columns=["cache"])
        b = pd.read_parquet(sharded / f"results/mine/cache/{split}.parquet").drop(columns=["cache"])
        pd.testing.assert_frame_equal(a, b)

    assert "Nothing to be done" in snakemake(sharded, *targets, "--cores", "2", "-n").stdout

    # The scan arrives: the inventory is made again, and only the last shard of each stage runs.
    shutil.move(str(held_back), valid[-1])
    again = jobs_run(snakemake(sharded, *targets, "--cores", "2", "--forcerun", "inventory"))
    assert again["ingest_shard"] == 1 and again["masks_shard"] == 1, again
    assert again["cache_shard"] == 1, again  # the test split's only shard; the train shards did not run
    m = manifests(sharded / "results/mine")
    assert len(m) == 10 and (m.status == "included").all()

    # A shard job cut off after three of its four scans: no status file for it, nothing gathered, one scan's
    # volume missing. The rerun runs that shard alone (and the masks shard after it); it skips the three scans.
    shard = shards.plan_shards(m.case_id, 4)["00001"]
    res = sharded / "results/mine"
    for lost in ["volumes/shards/00001.parquet", "volumes/status.parquet", "masks/status.parquet",
                 "manifest/train.parquet", "manifest/test.parquet", f"volumes/{shard[-1]}.nii.gz"]:
        (res / lost).unlink()
    again = jobs_run(snakemake(sharded, *targets, "--cores", "2"))
    # ... and the cache shard of the one scan made again (its volume file is new), not the others
    assert again.get("ingest_shard") == 1 and again.get("masks_shard") == 1 and again.get("cache_shard") == 1, again
    shard_log = (sharded / "results/mine/logs/ingest/00001.log").read_text()
    assert shard_log.count("up to date") == 3, shard_log
    assert (sharded / "results/mine/volumes" / f"{shard[-1]}.nii.gz").is_file()
    pd.testing.assert_frame_equal(manifests(sharded / "results/mine"), m)
