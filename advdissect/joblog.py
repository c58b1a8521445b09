"""Where a workflow job's messages go: its Snakemake log file."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


def log_to(path: str) -> TextIO:
    """Send logging, warnings, stdout and stderr (tqdm progress, tracebacks) to `path`.

    Snakemake shows a failed job's log (`--show-failed-logs`), so the traceback of an error
    belongs there rather than interleaved in the scheduler's console.
    """
    handle = open(path, "w", buffering=1)
    sys.stdout = sys.stderr = handle
    logging.basicConfig(
        stream=handle,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    return handle
