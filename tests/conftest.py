"""Shared test settings: where the real fixtures live.

The fixtures are in ../shared/data beside the repository (read-only; tests copy what they modify). Set
REG2RG_TEST_DATA to use another copy. A test that needs them carries `needs_fixtures(path, ...)`: when a path
is missing the test fails (never skips) with a message saying where the fixtures are expected, so a CI run
without them cannot pass unnoticed.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REG2RG_TEST_DATA", REPO.parent / "shared" / "data"))


def needs_fixtures(*paths):
    """Mark a test (or a module, as `pytestmark`) as reading these real fixture files or folders."""
    return pytest.mark.needs_fixtures(*(Path(p) for p in paths))


def pytest_configure(config):
    # `make test` runs two xdist workers on two cores: torch's default (a thread per core) in each worker
    # oversubscribes them (100 tiny training steps took 53.5 s with two threads beside another worker, 7.8 s with
    # one). Each worker's own torch work runs on one thread; the workflows the tests start run as configured.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    config.addinivalue_line("markers", "needs_fixtures(*paths): the test reads these real fixtures; it fails "
                                       "when one is missing")


def pytest_runtest_setup(item):
    missing = [p for mark in item.iter_markers("needs_fixtures") for p in mark.args if not p.exists()]
    if missing:
        pytest.fail(f"test fixtures missing: {', '.join(map(str, missing))}. The fixtures are expected in "
                    f"{SHARED_DATA} (../shared/data beside the repository, see its README.md; or set "
                    f"REG2RG_TEST_DATA to a copy of that folder)", pytrace=False)


# The order for `make test`'s two xdist workers (worksteal hands one worker the first half of this order and the
# other the second half; a worker that runs out takes the tail of the other's queue):
# - the longest test (the shipped demo end to end, CPU-bound) first, so that it starts at once on one worker;
# - the SLURM tests (long, but mostly waiting for jobs that are mostly Python start-up) at the head of the second
#   half, so that they start at once on the other worker and run beside it, not together at the end with a core
#   idle (2026-12-07: at the end they made the last 9 of the suite's 18 minutes at a load of 1.3).
LONGEST_FIRST = ("tests/test_demo_goals.py",)
SECOND_WORKER_FIRST = ("tests/test_cluster.py::test_demo_on_slurm", "tests/test_cluster.py::test_sat_and_serving",
                       "tests/test_cluster.py::test_node_down")
WORKERS = 2  # the Makefile's `pytest -n 2`


def pytest_collection_modifyitems(config, items):
    first = [i for i in items if i.nodeid.startswith(LONGEST_FIRST)]
    second = [i for i in items if i.nodeid.startswith(SECOND_WORKER_FIRST)]
    rest = [i for i in items if i not in first and i not in second]
    split = max(0, len(items) // WORKERS - len(first))  # where worksteal's second share starts, in `rest`
    items[:] = first + rest[:split] + second + rest[split:]


# The suite's CPU account, for choosing what to cut (`REG2RG_TEST_CPU=cpu.jsonl make test`): per test its wall
# time and the CPU seconds of its worker and of the worker's ended children (a workflow's jobs; the waited-for
# descendants of a child count once the child waits for them). Jobs that SLURM runs are not children: their
# CPU is in the cluster's accounting (sacct). Off unless the variable names a file; lines are appended.
CPU_ACCOUNT = os.environ.get("REG2RG_TEST_CPU")


def _cpu_seconds() -> tuple[float, float]:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if not CPU_ACCOUNT:
        yield
        return
    import json
    import time

    t0, (own0, kids0) = time.perf_counter(), _cpu_seconds()
    yield
    own1, kids1 = _cpu_seconds()
    line = {"test": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(own1 - own0, 2),
            "children_cpu_s": round(kids1 - kids0, 2)}
    with open(CPU_ACCOUNT, "a") as f:
        f.write(json.dumps(line) + "\n")
