"""Device choice, seeding, thread count, logging and progress bars shared by every stage.

torch and tqdm are imported inside the functions that need them: data preparation, selection and the report import
this module too, and a step that never touches torch should not pay its import (about a second per job).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
log = logging.getLogger("datasel")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# Library warnings that say nothing a user can act on. Each job is its own process, so a warning Python shows "once"
# still prints once per job: dozens of copies in a run. Matched on the message start; extend with care.
HARMLESS_WARNINGS = (
    # torch.from_numpy on a read-only Arrow buffer: datasel never writes into those tensors
    r"The given NumPy array is not writable",
)


def import_faiss() -> Any:
    """The ``faiss`` module; a clear error naming the install line where neither faiss build is installed.

    faiss comes in two builds that install the same module, so it is an extra (``cpu`` or ``gpu``), not a plain
    dependency: a bare ``pip install -e .`` has none.
    """
    try:
        import faiss
    except ImportError as exc:
        from datasel.errors import DataselError

        raise DataselError(f"faiss is not installed ({exc})", field="faiss",
                           fix="install datasel with one faiss build: pip install -e '.[cpu]' "
                               "(or '.[gpu]' on a CUDA machine)") from None
    return faiss


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' takes the GPU when one is visible, else the CPU; 'cuda' without a GPU falls back with a warning.

    The GPU is ``cuda`` (index 0 of what this process sees): a GPU job was given one device by its claim
    (:mod:`datasel.devices`) through ``CUDA_VISIBLE_DEVICES`` before torch started CUDA.
    """
    import torch

    if preference == "cpu":
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        if preference == "cuda":
            log.warning("device 'cuda' requested but no GPU is visible; running on CPU")
        device = torch.device("cpu")
    _note(f"device: {describe_device(device)}")
    return device


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3, CUDA_VISIBLE_DEVICES=3)`` or ``cpu``: what a log line should say."""
    import torch

    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"cuda:{index} ({torch.cuda.get_device_name(index)}"
            f"{f', CUDA_VISIBLE_DEVICES={visible}' if visible is not None else ''})")


_noted: set[str] = set()


def _note(message: str) -> None:
    """Log ``message`` once per process (pick_device and autocast run per batch or per seed)."""
    if message not in _noted:
        _noted.add(message)
        log.info(message)


# ---- numeric precision: compute.precision, set once per job by run_step ----
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_precision = "auto"


def set_precision(preference: str) -> None:
    """This process's ``compute.precision`` (every :func:`autocast` and :func:`resolve_precision` reads it)."""
    global _precision
    if preference not in PRECISIONS:
        from datasel.errors import ConfigError

        raise ConfigError(f"unknown precision {preference!r}", field="compute.precision",
                          fix=f"use one of {', '.join(PRECISIONS)}")
    _precision = preference


def resolve_precision(device: torch.device, exact: bool = False, preference: str | None = None,
                      frozen: bool = False) -> str:
    """fp32, bf16 or fp16 for work on ``device``.

    ``auto``: bf16 on a GPU that supports it, for training and forward passes; fp32 on the CPU (bit-for-bit
    reproducible), on GPUs without bf16 (fp16 needs loss scaling: ask for it), and for ``exact`` work (per-example
    gradients, their norms and projections, Fisher), which tests check against exact references. ``frozen``: the
    dtype of weights no gradient updates (an LM's base under LoRA), fp16 under auto on a GPU without bf16 (no loss
    scaling is needed where nothing is updated). An explicit fp32/bf16/fp16 applies at every autocast, exact work
    included.
    """
    import torch

    pref = _precision if preference is None else preference
    if pref == "auto":
        if exact or device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else ("fp16" if frozen else "fp32")
    if pref == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        from datasel.errors import ConfigError

        raise ConfigError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no bfloat16",
                          field="compute.precision", fix="use auto (fp32 on this GPU) or fp16")
    return pref


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, exact: bool = False,
             purpose: str = "forward") -> contextlib.AbstractContextManager[Any]:
    """The one mixed-precision switch: autocast to :func:`resolve_precision`'s choice, nothing for fp32.

    Logs the choice once per job (``precision: bf16 autocast for training on cuda``): the job's log records it.
    """
    import torch

    precision = resolve_precision(device, exact)
    _note(f"precision: {precision}{' autocast' if precision != 'fp32' else ''} for {purpose} on {device.type} "
          f"(compute.precision {_precision})")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(precision))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, make CPU kernels deterministic, and return a torch generator for sampling."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """A NumPy generator for one purpose ("noise", "splits", "policy:random"…).

    Seeding every draw with the bare seed would make draws of different purposes identical: with noise seed 0 and
    selection seed 0, a random 20% selection would be exactly the 20% of rows whose labels were flipped.
    """
    salt = int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([int(seed), salt])


def set_threads(n: int) -> None:
    """Fix torch's intra-op threads from config, not from Snakemake's ``threads``.

    Reduction order depends on the thread count, so tying it to ``--cores`` would make scores differ in the last bits
    between runs with different ``--cores``. Before torch is imported, OMP_NUM_THREADS fixes the count torch starts
    with (so a step that imports torch lazily gets the same count); after, torch is told directly.
    """
    n = max(1, int(n))
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class _Bar(Iterator[T]):
    """An iterator over a tqdm bar that counts an item when it is handed out and closes at ``total``.

    tqdm counts an item only when the *next* one is requested, so a loop that pulls exactly ``total`` items with
    ``next()`` and stops (the training loops do) leaves the bar at total − 1 ("199/200") and never closes it.
    """

    def __init__(self, items: Iterable[T], bar: Any) -> None:
        self._it, self._bar = iter(items), bar

    def __next__(self) -> T:
        try:
            item = next(self._it)
        except StopIteration:
            self._bar.close()
            raise
        self._bar.update(1)
        if self._bar.total is not None and self._bar.n >= self._bar.total:
            self._bar.close()
        return item


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr that stays quiet when DATASEL_PROGRESS=0 (tests) and refreshes rarely in logs."""
    if os.environ.get("DATASEL_PROGRESS", "1") == "0":
        return iter(items)
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total, desc=desc, unit=unit, mininterval=0.5 if interactive else 10.0, dynamic_ncols=True,
               file=sys.stderr)
    return _Bar(items, bar)


def quiet_harmless_warnings() -> None:
    """Silence :data:`HARMLESS_WARNINGS` and send every other warning through logging (so it reaches the log file)."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.captureWarnings(True)


def setup_logging(level: int = logging.INFO, logfile: str | os.PathLike | None = None) -> None:
    """Log records to stderr and, when given, to ``logfile`` (a rule's ``log:``), both with one format.

    A record carrying ``extra={"stderr": False}`` goes to the file only: the step's final error, which the Snakemake
    process prints once at the end of the run (see :mod:`datasel.snakemake_entry`).
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.addFilter(lambda record: getattr(record, "stderr", True))
    handlers: list[logging.Handler] = [stream]
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    # faiss logs a ModuleNotFoundError at INFO while probing CPU builds; it is not an error for our users
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    quiet_harmless_warnings()
