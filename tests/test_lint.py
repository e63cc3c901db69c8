"""The code and the workflow as their ecosystems expect them, enforced by the test suite (so by CI): ruff on the
Python, snakefmt on the Snakefile and rule files, and Snakemake's own linter on the default config and on every experiment config."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The one Snakemake lint accepted: no conda channel or container registry is reachable where the pipeline is built
# and tested, so an environment that cannot be built and tested is not declared (CONTRIBUTING.md, Snakemake).
ACCEPTED = {"Specify a conda environment or container for each rule."}
# the lint a rule file holding a `def` draws (its logic belongs in datasel/workflow_support.py)
MIXED = "Mixed rules and functions in same snakefile."


def _tool(name: str) -> str:
    """The tool of this interpreter's environment (the `dev` extra installs it), else one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATASEL_PROGRESS": "0"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_check_is_clean():
    out = _run([_tool("ruff"), "check", "--no-cache", "datasel", "tests", "benchmarks", "workflow"])
    assert out.returncode == 0, f"ruff check found problems (fix: ruff check --fix <files>):\n{out.stdout}{out.stderr}"


def test_snakefmt_check_is_clean():
    out = _run([_tool("snakefmt"), "--check", "."])
    assert out.returncode == 0, f"snakefmt would reformat (fix: snakefmt <files>):\n{out.stdout}{out.stderr}"


def parse_lint(text: str) -> dict[str, list[str]]:
    """Snakemake's text lint report as {what: [lint titles]}, what being `snakefile <path>` or `rule <name>`.
    (Snakemake 9's command line ignores `--lint json`, so its text is parsed.)"""
    found: dict[str, list[str]] = {}
    what = None
    for line in text.splitlines():
        head = re.match(r"Lints for (snakefile (\S+)|rule (\S+) \(line \d+, (\S+)\)):$", line)
        if head:
            what = f"snakefile {Path(head.group(2)).relative_to(ROOT)}" if head.group(2) else f"rule {head.group(3)}"
            found.setdefault(what, [])
            continue
        item = re.match(r"    \* (.+):$", line)
        if item and what is not None:
            found[what].append(item.group(1))
    return found


def test_parse_lint_reads_snakemakes_report():
    text = (f"Lints for snakefile {ROOT}/rules/x.smk:\n    * Mixed rules and functions in same snakefile.:\n"
            "      Small one-liner functions used only once should be defined as lambda expressions.\n"
            f"Lints for rule prepare (line 13, {ROOT}/rules/data.smk):\n"
            "    * Specify a conda environment or container for each rule.:\n      This way, the used software\n")
    assert parse_lint(text) == {"snakefile rules/x.smk": [MIXED], "rule prepare": [next(iter(ACCEPTED))]}


def _unexpected_lints(tmp_path: Path, configfile: Path | None = None) -> None:
    """Snakemake's lint of one config, parsed only (no job runs), in an empty run folder so nothing is written to
    the checkout; fails on any lint but the accepted one."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    out = _run([*cmd, "--lint"])
    text = out.stdout + out.stderr
    found = parse_lint(text)
    assert found, f"snakemake --lint printed no report (exit {out.returncode}):\n{text[-3000:]}"
    assert any(f.startswith("rule ") for f in found), "the config's rules were not linted"
    unexpected = {w: [t for t in titles if t not in ACCEPTED] for w, titles in found.items()}
    unexpected = {w: t for w, t in unexpected.items() if t}
    assert not unexpected, f"snakemake --lint: {unexpected}\n{text[-6000:]}"


def test_snakemake_lint_finds_only_the_accepted_lint(tmp_path):
    _unexpected_lints(tmp_path)


# Data files an experiment reads from its run folder, built there by the command its header gives, so the config
# parses as it does for a user who followed that header.
RUN_FOLDER_DATA = {"data/stdlib_docstrings.jsonl": "datasel.features.textdata"}
EXPERIMENTS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))


def _build_run_folder_data(configfile: Path, run: Path) -> None:
    from datasel.config import load_config

    data = load_config([configfile]).config.get("data") or {}
    path = data.get("path") if data.get("source") == "files" else None
    if path is None or Path(path).is_absolute():
        return
    builder = RUN_FOLDER_DATA.get(str(path))
    if builder is None:
        pytest.fail(f"{configfile.name} reads {path} from its run folder: add the module that builds it to "
                    "RUN_FOLDER_DATA in tests/test_lint.py")
    importlib.import_module(builder).main([str(run / path)])


@pytest.mark.parametrize("configfile", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_snakemake_lint_of_each_experiment(configfile, tmp_path):
    # about 4 s of CPU each (the Snakefile parsed under that config, no job run), so one test per config
    _build_run_folder_data(configfile, tmp_path)
    _unexpected_lints(tmp_path, configfile)
