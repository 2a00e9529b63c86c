"""Shared test settings: where the real fixtures live.

The fixtures are in ../shared/data beside the repository (read-only; tests copy what they modify). Set
REG2RG_TEST_DATA to use another copy.
"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REG2RG_TEST_DATA", REPO.parent / "shared" / "data"))


# The suite's longest test (the shipped demo end to end, most of the suite's time) runs first: with `make test`
# (two xdist workers, worksteal) it starts at once on one worker while the other runs the rest of the suite.
LONGEST_FIRST = ("tests/test_demo_goals.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))
