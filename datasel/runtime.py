"""Device choice, seeding, thread count and progress bars shared by every stage."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("datasel")


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' takes the GPU when one is visible, else the CPU; 'cuda' without a GPU falls back with a warning."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        log.warning("device 'cuda' requested but no GPU is visible; running on CPU")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, make CPU kernels deterministic, and return a torch generator for sampling."""
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
    between runs with different ``--cores``.
    """
    torch.set_num_threads(max(1, int(n)))
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr that stays quiet when DATASEL_PROGRESS=0 (tests) and refreshes rarely in logs."""
    disable = os.environ.get("DATASEL_PROGRESS", "1") == "0"
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            unit=unit,
            disable=disable,
            mininterval=0.5 if interactive else 10.0,
            dynamic_ncols=True,
            file=sys.stderr,
        )
    )


def setup_logging(level: int = logging.INFO, logfile: str | os.PathLike | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    # faiss logs a ModuleNotFoundError at INFO while probing CPU builds; it is not an error for our users
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
