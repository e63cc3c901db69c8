"""One GPU per job on a machine with several: the visible pool, and each GPU job's claim of one device in it.

Snakemake counts GPUs (the ``gpu`` resource) but hands out no device ids, and torch picks ``cuda:0`` in every
process: without a claim, eight concurrent jobs on an 8-GPU machine all land on GPU 0. So:

- the run's Snakemake process (``rules/common.smk``) finds the pool, the GPUs this run may use, without
  initializing CUDA: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``; it publishes the pool to its
  jobs in :data:`POOL_ENV` and, unless ``--resources gpu=N`` was given, lets as many GPU jobs run at once;
- each GPU job (:func:`claim_for_job`, called by :func:`datasel.snakemake_entry.run_step` before the step imports
  or initializes CUDA) takes the first free device: an exclusive non-blocking ``flock`` on one file per device under
  :data:`LOCK_DIR` in the run folder, held by the open descriptor until the process ends (the kernel drops it when
  the job dies, even by SIGKILL: no stale lock to clean up), then ``CUDA_VISIBLE_DEVICES`` set to that device;
- a job whose ``CUDA_VISIBLE_DEVICES`` was set for it (a Slurm step, a user) keeps it and claims nothing; so does a
  job inside a Slurm allocation that was given no GPU, and a job that asks for no GPU (``compute.device: cpu``).

``DATASEL_FAKE_GPUS=N`` makes the pool N devices without looking at the machine: for tests and dry runs only (on a
machine without CUDA the claimed id changes nothing but the log line).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from datasel.errors import ConfigError

log = logging.getLogger("datasel")

POOL_ENV = "DATASEL_GPU_POOL"
FAKE_ENV = "DATASEL_FAKE_GPUS"
LOCK_DIR = Path(".snakemake", "datasel", "gpus")
# a device entry as CUDA_VISIBLE_DEVICES takes it (an index, GPU-<uuid>, MIG-<uuid>) and as a lock file name
_ENTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# more concurrent jobs than devices (`--resources gpu=16` on 8 GPUs) share them evenly: slot 1 of every device is
# taken before slot 2 of any; the bound only guards against a runaway loop
MAX_SLOTS = 64

_held: list[int] = []  # claimed lock descriptors, open for the life of the process (closing one would release it)


def parse_visible(value: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value; CUDA stops at the first invalid one (``0,-1,2`` is ``0``)."""
    out = []
    for part in value.split(","):
        part = part.strip()
        if not _ENTRY.match(part):
            break
        out.append(part)
    return out


def _nvidia_smi() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (PCI bus order); a GPU split into MIG instances gives their UUIDs instead.

    nvidia-smi reads the driver through NVML; it does not initialize CUDA in this process (torch is not touched).
    """
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    pool: list[str] = []
    for line in out.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        mig = re.search(r"^\s+MIG .*\(UUID: (MIG-[A-Za-z0-9-]+)\)", line)
        if gpu:
            pool.append(gpu.group(1))
        elif mig and pool:
            if not pool[-1].startswith("MIG-"):
                pool.pop()  # the parent GPU of MIG instances cannot run CUDA work by its index
            pool.append(mig.group(1))
    return pool


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries, found without initializing CUDA."""
    env = os.environ if env is None else env
    fake = env.get(FAKE_ENV)
    if fake is not None:
        if not fake.strip().isdigit():
            raise ConfigError(f"{FAKE_ENV}={fake!r} is not a GPU count", field=FAKE_ENV,
                              fix=f"unset {FAKE_ENV} (it is for tests and dry runs) or give a count such as 2")
        return [str(i) for i in range(int(fake))]
    preset = env.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        return parse_visible(preset)
    return _nvidia_smi()


@dataclass(frozen=True)
class Claim:
    device: str  # the CUDA_VISIBLE_DEVICES entry this process now holds
    slot: int  # 0 unless more jobs run than there are devices
    lock: Path


def claim_gpu(pool: list[str], lock_dir: Path) -> Claim:
    """Lock the first free device of ``pool`` (slot 0 of each device before slot 1 of any) for this process."""
    if not pool:
        raise ValueError("claim_gpu: empty pool")
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        for device in pool:
            path = lock_dir / (f"gpu{device}.lock" if slot == 0 else f"gpu{device}.{slot}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            # who holds it, for a person looking at the folder (the lock itself is the flock, not this text)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held.append(fd)
            return Claim(device, slot, path)
    raise RuntimeError(f"no free GPU slot under {lock_dir} after {MAX_SLOTS} per device")


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def claim_for_job(gpus: int, env: MutableMapping[str, str] | None = None, workdir: Path | None = None) -> str:
    """Give this job process its GPU (``gpus`` is the job's ``gpu`` resource) and say what happened, for the log.

    Sets ``CUDA_VISIBLE_DEVICES`` (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so index i is nvidia-smi's GPU i) in ``env``
    when it claims; must run before torch initializes CUDA, which reads the variable once.
    """
    env = os.environ if env is None else env
    preset = env.get("CUDA_VISIBLE_DEVICES")
    if gpus <= 0:
        return "GPU: none asked for (compute.device cpu, or a CPU step)"
    pool_env = env.get(POOL_ENV)
    if pool_env is not None:
        pool = parse_visible(pool_env) if pool_env else []
        # the run's pool came from the Snakemake process's own CUDA_VISIBLE_DEVICES (inherited unchanged) or from
        # nvidia-smi (no variable): anything else was set for this job alone
        if preset is not None and preset != pool_env:
            return f"GPU: CUDA_VISIBLE_DEVICES={preset} set for this job, kept"
    elif preset is not None:
        return f"GPU: CUDA_VISIBLE_DEVICES={preset} set for this job, kept"
    elif env.get("SLURM_JOB_ID"):
        # the node's devices are Slurm's to hand out; a lock in a shared run folder would mix up nodes
        return "GPU: Slurm set no CUDA_VISIBLE_DEVICES for this job; nothing claimed"
    else:
        pool = visible_gpus(env)
    if not pool:
        return "GPU: none visible; nothing claimed"
    if _cuda_initialized():
        raise RuntimeError("claim_for_job ran after torch initialized CUDA; CUDA_VISIBLE_DEVICES would be ignored")
    claim = claim_gpu(pool, (workdir or Path.cwd()) / LOCK_DIR)
    env["CUDA_VISIBLE_DEVICES"] = claim.device
    if claim.device.isdigit():
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    shared = f", shared: all {len(pool)} devices are taken (more GPU jobs run than devices)" if claim.slot else ""
    return f"GPU: claimed device {claim.device} of {','.join(pool)} (CUDA_VISIBLE_DEVICES={claim.device}{shared})"
