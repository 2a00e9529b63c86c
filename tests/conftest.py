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


# The suite's longest test (the shipped demo end to end, most of the suite's time) runs first: with `make test`
# (two xdist workers, worksteal) it starts at once on one worker while the other runs the rest of the suite.
LONGEST_FIRST = ("tests/test_demo_goals.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))
