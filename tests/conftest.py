"""Shared test settings: where the real fixtures live.

The fixtures are in ../shared/data beside the repository (read-only; tests copy what they modify). Set
REG2RG_TEST_DATA to use another copy.
"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REG2RG_TEST_DATA", REPO.parent / "shared" / "data"))
