"""The bridge from a Snakemake ``script:`` to a library function.

Scripts in ``workflow/scripts/`` are two lines: they hand the injected ``snakemake`` object to :func:`run_step`.
Here we set up logging into the rule's log file, fix threads and seeds, and turn a :class:`DataselError` into a
short message and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from datasel.errors import DataselError
from datasel.runtime import set_threads, setup_logging

log = logging.getLogger("datasel")


def run_step(smk: Any, fn: Callable[[Any], None]) -> None:
    """Run ``fn(smk)`` with logging to the rule's log, config-fixed threads and clean error reporting."""
    logfile = smk.log[0] if len(smk.log) else None
    setup_logging(logfile=logfile)
    compute = smk.config.get("compute", {}) if hasattr(smk, "config") else {}
    set_threads(int(compute.get("threads", 1)))
    if "DATASEL_PROGRESS" not in os.environ and not compute.get("progress", True):
        os.environ["DATASEL_PROGRESS"] = "0"
    try:
        fn(smk)
    except DataselError as exc:
        msg = f"datasel error in rule '{smk.rule}': {exc}"
        log.error(msg)
        print(msg, file=sys.stderr)
        sys.exit(1)
