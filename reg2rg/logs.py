"""Logging for workflow steps: everything (our log records, library warnings, progress bars) goes to the
rule's log file."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_script_logging(log_path, level=logging.INFO) -> None:
    """Send logging and stderr (tqdm writes there) to `log_path`, for a Snakemake `script:` adapter."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(log_path, "a", buffering=1)
    sys.stderr = stream
    logging.basicConfig(level=level, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
