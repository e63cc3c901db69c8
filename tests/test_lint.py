"""The code and the workflow as their ecosystems expect them, enforced by the test suite (so by CI): ruff on the
Python, snakefmt on the Snakefile and rule files, and Snakemake's own linter on the default config."""

from __future__ import annotations

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


def test_snakemake_lint_finds_only_the_accepted_lint(tmp_path):
    # the default config, parsed only (no job runs), in an empty run folder so nothing is written to the checkout
    out = _run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                str(tmp_path), "--lint"])
    text = out.stdout + out.stderr
    found = parse_lint(text)
    assert found, f"snakemake --lint printed no report (exit {out.returncode}):\n{text[-3000:]}"
    assert any(f.startswith("rule ") for f in found), "the default config's rules were not linted"
    unexpected = {w: [t for t in titles if t not in ACCEPTED] for w, titles in found.items()}
    unexpected = {w: t for w, t in unexpected.items() if t}
    assert not unexpected, f"snakemake --lint: {unexpected}\n{text[-6000:]}"
