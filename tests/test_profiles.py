"""`snakemake --profile gpu` typed at the repository root finds the profile and plans the default run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("profile", ["gpu", "slurm"])
def test_profile_resolves_at_repo_root(tmp_path, profile):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for rel in files:
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            dst.write_bytes(src.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", profile, "-n"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "train" in out and "proxy" in out
    if profile == "gpu":
        assert "gpu=1" in out.replace(" ", "") or "gpu: 1" in out
