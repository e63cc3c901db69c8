"""The bridge from a Snakemake ``script:`` to a library function, and the clean error output of a failed run.

Library steps take typed arguments (paths, config slices, seed, device) and know nothing of Snakemake; the scripts
in ``workflow/scripts/`` unpack the injected ``snakemake`` object into them through :func:`run_step`, e.g.
``run_step(snakemake, lambda s: catalog(s.output[0]))``. Among the library's modules only the runner adapters (this
one, :mod:`datasel.workflow_support`, :mod:`datasel.cli`) may see that object (tests/test_layering.py).

Here we set up logging into the rule's log file and stderr, give a GPU job its own device
(:func:`datasel.devices.claim_for_job`) and the configured precision, fix threads, time the step, and turn a
:class:`DataselError` into one short message and exit status :data:`EXIT_DATASEL` instead of a traceback.

Where the message goes: a failing step writes it to its log file only. The Snakemake process (through
:func:`install_error_summary`, called from ``rules/report.smk``) drops its own ``CalledProcessError`` tail for
that exit status and prints the message from the log as the run's last lines, so a user reads it exactly once, at
the end, without Snakemake's traceback. Snakemake's short "Error in rule …" block (rule, outputs, log path) stays.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasel.devices import claim_for_job
from datasel.errors import DataselError
from datasel.runtime import set_precision, set_threads, setup_logging

log = logging.getLogger("datasel")

# a step refused its input (a DataselError): distinct from 1 (a crash, whose traceback Snakemake should show)
EXIT_DATASEL = 3
# the line that starts the message in the log file; install_error_summary reads from it to the end of the log
ERROR_MARK = "datasel error in rule "


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), i.e. interpreter start + imports before the step ran."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def run_step(smk: Any, fn: Callable[[Any], None], preload: Sequence[str] = ()) -> None:
    """Run ``fn(smk)`` with logging to the rule's log, its GPU claimed, config-fixed threads and precision, and clean
    error reporting.

    ``preload`` names heavy modules the step imports lazily (torch): they are imported before the clock starts, so
    the logged start-up (wall and CPU seconds) is what the job pays before its work, whichever module imports them.
    """
    logfile = smk.log[0] if len(smk.log) else None
    setup_logging(logfile=logfile)
    compute = smk.config.get("compute", {}) if hasattr(smk, "config") else {}
    try:
        # before anything imports torch or starts CUDA, which reads CUDA_VISIBLE_DEVICES once
        gpu_note = claim_for_job(job_gpus(smk))
        set_precision(str(compute.get("precision", "auto")))
    except DataselError as exc:
        _refuse(smk, exc, logfile)
    for module in preload:
        importlib.import_module(module)
    startup, startup_cpu = process_age(), time.process_time()
    set_threads(int(compute.get("threads", 1)))
    if "DATASEL_PROGRESS" not in os.environ and not compute.get("progress", True):
        os.environ["DATASEL_PROGRESS"] = "0"
    items = getattr(getattr(smk, "wildcards", None), "items", None)
    where = " ".join(f"{k}={v}" for k, v in items()) if items else ""
    # a step run by a Slurm job names it, so its log ties the step to the cluster's record (squeue, sacct)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    log.info("step %s%s: started (process start and imports %s, CPU %.2fs)%s", smk.rule, f" {where}" if where else "",
             "?" if startup is None else f"{startup:.2f}s", startup_cpu,
             f" in Slurm job {slurm_job}" if slurm_job else "")
    log.info("%s", gpu_note)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        fn(smk)
    except DataselError as exc:
        _refuse(smk, exc, logfile)
    log.info("step %s: done, work %.2fs, CPU %.2fs", smk.rule, time.perf_counter() - t0, time.process_time() - c0)


def job_gpus(smk: Any) -> int:
    """The GPUs the job asked for (rules/common.smk job_resources): its ``gpu`` resource, or on a cluster with
    compute.gpu_request gres the count in ``gres=gpu[:type]:N``; 1 for a GPU rule unless compute.device is cpu."""
    resources = getattr(smk, "resources", None)
    try:
        gpu = int(getattr(resources, "gpu", 0) or 0)
    except (TypeError, ValueError):
        gpu = 0
    gres = str(getattr(resources, "gres", "") or "")
    if not gpu and gres.split(":")[0] == "gpu":
        last = gres.rsplit(":", 1)[-1]
        gpu = int(last) if last.isdigit() and ":" in gres else 1
    return gpu


def _refuse(smk: Any, exc: DataselError, logfile: str | None) -> None:
    # file only (stderr=False): the Snakemake process prints it once at the end, see install_error_summary
    log.error("%s'%s': %s", ERROR_MARK, smk.rule, exc, extra={"stderr": False})
    if logfile is None:  # no log file to read it back from: the user must still see it
        print(f"{ERROR_MARK}'{smk.rule}': {exc}", file=sys.stderr)
    sys.exit(EXIT_DATASEL)


def compute_device(smk: Any) -> str:
    """The device ``compute.device`` asks for (``auto``: the GPU when one is visible), for a step's ``device``."""
    return str(((getattr(smk, "config", None) or {}).get("compute") or {}).get("device", "auto"))


def over_outputs(fn: Callable[[Any, str, list[str]], None], wildcard: str, values_param: str) -> Callable[[Any], None]:
    """Run a one-output step once per output of a job that gathers several, in one process.

    The training rule makes one job per selection over all its seeds (``params.seeds`` lists them in output
    order): the process start and imports (seconds per job, more than a small model's training) are paid once,
    not once per seed. ``fn(smk, value, outputs)`` runs what a one-seed job would, for that value and its own
    outputs. A job with k outputs per value lists them in k blocks (every value's first output, then every value's
    second: metrics, then curves); ``fn`` gets its k in that order. Each seed seeds every generator itself, so its
    result does not depend on the seeds run before it.
    """

    def step(smk: Any) -> None:
        values = list(getattr(smk.params, values_param))
        outputs = [smk.output[i] for i in range(len(smk.output))]
        if not values or len(outputs) % len(values):
            raise RuntimeError(f"rule {smk.rule}: {len(outputs)} outputs but {values_param}={values}")
        for i, value in enumerate(values):
            own = outputs[i :: len(values)]
            t0 = time.perf_counter()
            fn(smk, str(value), own)
            log.info("step %s %s=%s: work %.2fs", smk.rule, wildcard, value, time.perf_counter() - t0)

    return step


def read_error(logfile: str | os.PathLike) -> str | None:
    """The datasel error message a failed step left at the end of its log file, if any."""
    try:
        text = Path(logfile).read_text(errors="replace")
    except OSError:
        return None
    at = text.rfind(ERROR_MARK)
    return text[at:].strip() if at >= 0 else None


class ErrorSummary(logging.Filter):
    """A filter on Snakemake's logger: remembers failed jobs' datasel errors, drops the tail they would cause.

    - a job error record (``Error in rule …``) names the job's log files: the datasel message is read from them;
    - the ``RuleException``/``CalledProcessError`` record of a script that exited with :data:`EXIT_DATASEL` is
      dropped (it says only that the script failed, with a temporary script path);
    - the final ``WorkflowError: At least one job did not complete successfully.`` is replaced by the messages;
    - the ``Shell command: None`` line Snakemake prints for every script job (it has no shell command) is dropped.
    """

    def __init__(self) -> None:
        super().__init__("datasel")
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self._filter(record)
        except Exception:  # never let a display nicety break Snakemake's logging
            return True

    def _filter(self, record: logging.LogRecord) -> bool:
        logs = getattr(record, "log", None)
        if getattr(record, "rule_name", None) is not None and logs:
            for path in logs:
                msg = read_error(path)
                if msg and msg not in self.messages:
                    self.messages.append(msg)
            return True
        event = getattr(getattr(record, "event", None), "name", None)
        if event == "SHELLCMD" and getattr(record, "shellcmd", None) is None:
            return False
        text = record.getMessage()
        if "CalledProcessError" in text and f"non-zero exit status {EXIT_DATASEL}." in text:
            return False
        if self.messages and "At least one job did not complete successfully" in text:
            record.msg, record.args = "\n\n".join(self.messages), ()
        return True


def install_error_summary() -> None:
    """Attach one :class:`ErrorSummary` to Snakemake's logger (idempotent: the Snakefile may be parsed twice)."""
    logger = logging.getLogger("snakemake.logging")
    if not any(isinstance(f, ErrorSummary) for f in logger.filters):
        logger.addFilter(ErrorSummary())
