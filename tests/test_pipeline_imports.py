"""A job pays for the libraries its step uses, no more: the steps that never train (prepare, select, catalog) do not
import torch (about 2 s of CPU per process, 16+ select jobs a run), and each step's log says what its start cost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

from conftest import ROOT

from datasel.snakemake_entry import run_step


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    return set(out.stdout.split())


def test_steps_that_never_train_do_not_import_torch() -> None:
    # what the prepare/select/catalog scripts import, and the policy registry a select job loads (every policy)
    mods = _modules_after("from datasel.pipeline import prepare, select, catalog\n"
                          "from datasel.snakemake_entry import run_step\n"
                          "from datasel.selection.base import POLICIES; POLICIES.names()\n"
                          "from datasel.selection.curriculum import order_positions")
    assert "torch" not in mods and "duckdb" not in mods
    assert "torch" in _modules_after("from datasel.pipeline import train\nimport datasel.training.classify")


def test_step_log_gives_start_and_work_in_wall_and_cpu_seconds_after_the_preloads(tmp_path) -> None:
    log = tmp_path / "step.log"
    seen = {}
    smk = SimpleNamespace(log=[str(log)], rule="select", config={}, wildcards=SimpleNamespace(items=lambda: []))
    run_step(smk, lambda s: seen.setdefault("preloaded", "colorsys" in sys.modules), preload=("colorsys",))
    text = log.read_text()
    assert seen["preloaded"]
    assert re.search(r"step select: started \(process start and imports [\d.]+s, CPU [\d.]+s\)", text), text
    assert re.search(r"step select: done, work [\d.]+s, CPU [\d.]+s", text), text
