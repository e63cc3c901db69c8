"""A throwaway single-node Slurm cluster (munged + slurmctld + slurmd) in a temporary folder.

Used by tests/test_slurm.py and benchmarks/slurm.py. Everything it writes (keys, sockets, state, logs, slurm.conf)
lives under one folder, and the three daemons run in the foreground as children of this process, so they are
stopped by their process ids and nothing is left behind. It needs root (slurmd launches jobs as their user) and
Debian's `slurm-wlm` and `munge` packages (`.ci/run` installs them where apt is available).

Accounting is off on purpose (no slurmdbd): `sacct` fails here, which is the case a profile that queries job
status with `sacct` gets wrong (see profiles/slurm/config.yaml).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "srun")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be stood up on this machine; the message says why (a test skips with it)."""


def missing_requirements() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "Slurm needs a POSIX machine"
    if os.geteuid() != 0:
        return "a single-node Slurm needs root (slurmd starts jobs as their user); run as root, as .ci/run does"
    absent = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None]
    if absent:
        return (f"Slurm/munge not installed ({', '.join(absent)} not on PATH); "
                "install with `apt-get install -y slurm-wlm munge` (.ci/run does this where apt is available)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SlurmCluster:
    """One node (this host, ``cpus`` CPUs, ``mem_mb`` MB), one default partition ``partition``."""

    root: Path
    cpus: int = 2
    mem_mb: int = 8000
    partition: str = "main"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def node(self) -> str:
        """This host's short name: slurmd looks its NodeName up by it (a FQDN would not match)."""
        return socket.gethostname().split(".")[0]

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment a Slurm client (sbatch, squeue, Snakemake's executor) needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def _write_srun_shim(self) -> None:
        # Inside a job, Snakemake's jobstep executor starts the step with `srun` after dropping every SLURM_*
        # variable but a few, SLURM_CONF included, so srun would look for /etc/slurm/slurm.conf (a real cluster's
        # place, which this throwaway one must not touch). An `srun` first on PATH puts SLURM_CONF back.
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{shutil.which("srun")}" "$@"\n')
        shim.chmod(0o755)

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_conf(self) -> None:
        r = self.root
        host = self.node
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # MinJobAge keeps a finished job visible to `squeue --states=all` for 5 minutes (Slurm's default, written
        # out because the status query of the profile relies on it); the job completion log keeps every finished
        # job for jobs() (it is not accounting: sacct stays unavailable); no cgroups (a container has none to
        # give), no accounting.
        self.conf.write_text(f"""\
ClusterName=datasel
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r / "munge" / "munge.socket"}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "slurmctld.log"}
SlurmdLogFile={r / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
JobCompType=jobcomp/filetxt
JobCompLoc={r / "jobcomp.log"}
KillWait=5
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Start the daemons and wait until the node takes jobs; on failure stop what started and raise
        SlurmUnavailable with the daemons' last log lines."""
        why = missing_requirements()
        if why:
            raise SlurmUnavailable(why)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self._write_srun_shim()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        try:
            # --force: the tmp folder's parents are not munge's idea of a safe directory tree
            self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                                   f"--socket={m / 'munge.socket'}", f"--pid-file={m / 'munged.pid'}",
                                   f"--seed-file={m / 'munged.seed'}", f"--log-file={self.root / 'munged.log'}"])
            self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged did not open its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld did not answer")
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(lambda: self._ok(["sinfo", "-h", "-o", "%t"], "idle"), timeout, "the node did not come up idle")
        except SlurmUnavailable:
            self.stop()
            raise
        return self

    def _ok(self, cmd: list[str], want: str) -> bool:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=30)
        return proc.returncode == 0 and want in proc.stdout

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                break
            if ready():
                return
            time.sleep(0.5)
        tails = "\n".join(f"--- {n}.log / stdout:\n{self.log(n)[-1500:]}"
                          f"{(self.root / f'{n}.stdout').read_text(errors='replace')[-800:]}" for n in self.procs)
        raise SlurmUnavailable(f"{what} (exited: {', '.join(dead) or 'none'})\n{tails}")

    def stop(self) -> None:
        """SIGTERM each daemon by its pid (slurmd first, munged last), SIGKILL what is still up after 15 s."""
        for name in reversed([n for n in DAEMONS if n in self.procs]):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.procs.clear()

    def jobs(self) -> list[dict[str, str]]:
        """Every job that finished, from the job completion log: JobId, Name, JobState, ProcCnt (CPUs), Partition,
        ExitCode, ... (the log's own keys)."""
        path = self.root / "jobcomp.log"
        if not path.exists():
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in path.read_text().splitlines() if line.strip()]
