"""Per-scan work as many jobs: the shard plan of a data set's scans and the gather of the shards' tables.

The per-scan stages (ingest, masks, SAT's input, run and import, LLM report splitting, cache) run as one
job per shard of `sharding.scans_per_job` scans (docs/cluster.md), so that a cluster runs the shards side by
side. A shard is a run of consecutive case ids in sorted order: a shard's membership depends only on the
sorted ids and the shard size, never on the order the files were found in, and scans added after the last
id (the usual case: new case numbers) change only the last shards. Each shard job records a digest of its
rows (rows_digest), so that a rerun after a change of the data set runs only the shards whose rows changed;
inside a shard every scan whose outputs are up to date is skipped, so a shard cut off mid-run (a cancelled
job, a time limit) redoes only its unfinished scans.

The gathered table of a stage (gather) is the same whatever the shard size: the shards' rows, sorted by
case id, as the unsharded stage writes them.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence

SHARD_NAME_DIGITS = 5  # room for 25,000 scans at one scan per job


def shard_name(index: int) -> str:
    """The name of shard `index` as it appears in paths (`00000`, `00001`, ...)."""
    return f"{index:0{SHARD_NAME_DIGITS}d}"


def plan_shards(case_ids: Iterable[str], scans_per_job: int | None) -> dict[str, list[str]]:
    """Shard name -> its case ids: the sorted ids cut into runs of `scans_per_job` (None or 0: one shard).

    An empty data set has one empty shard, so that every stage still writes its (empty) table."""
    given = list(case_ids)
    ids = sorted(set(given))
    if len(ids) != len(given):
        raise ValueError("plan_shards: case ids occur twice")
    if scans_per_job is not None and (not isinstance(scans_per_job, int) or scans_per_job < 0):
        raise ValueError(f"sharding.scans_per_job must be a positive whole number or null, not {scans_per_job!r}")
    size = scans_per_job or max(1, len(ids))
    n = max(1, math.ceil(len(ids) / size))
    if n > 10**SHARD_NAME_DIGITS:
        raise ValueError(f"{len(ids)} scans at {size} per job are {n} shards: at most {10**SHARD_NAME_DIGITS}")
    return {shard_name(i): ids[i * size:(i + 1) * size] for i in range(n)}


def rows_digest(table, case_ids: Sequence[str], extra: dict | None = None) -> str:
    """sha256 over the rows of `table` (a DataFrame with `case_id`) for these case ids, in their order, and
    `extra` (other facts the shard's result depends on). Equal digests: the shard's inputs did not change."""
    rows = table.set_index("case_id").loc[list(case_ids)].reset_index()
    text = rows.to_json(orient="records", default_handler=str) + json.dumps(extra or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def select_cases(table, case_ids: Sequence[str]):
    """The rows of `table` for these case ids (all of them must be there), in the table's order."""
    missing = sorted(set(case_ids) - set(table.case_id))
    if missing:
        raise ValueError(f"shard names scans that are not in the table: {missing[:5]}")
    return table[table.case_id.isin(set(case_ids))].reset_index(drop=True)


def gather(tables: Iterable):
    """The shards' tables as one, sorted by case id (a case id in two shards is an error)."""
    import pandas as pd

    tables = list(tables)
    nonempty = [t for t in tables if len(t)]
    out = pd.concat(nonempty, ignore_index=True) if nonempty else tables[0].iloc[0:0]
    dup = out[out.case_id.duplicated(keep=False)]
    if len(dup):
        raise ValueError(f"gather: case ids in more than one shard: {sorted(set(dup.case_id))[:5]}")
    return out.sort_values("case_id", kind="stable").reset_index(drop=True)


def gather_parquet(paths: Iterable, out_path) -> None:
    """gather() over Parquet files, written to `out_path`."""
    import pandas as pd

    gather(pd.read_parquet(p) for p in paths).to_parquet(out_path, index=False)
