"""The library does not know its runner: no module under datasel/ imports Snakemake or takes its object, except the
runner adapters. A step takes typed arguments (paths, config slices, seed, device) and the script in
workflow/scripts/ unpacks ``snakemake`` into them, so steps run from tests, notebooks or another runner alike."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "datasel"

# the runner adapters: the bridge a script calls (run_step, over_outputs), the rule files' helpers, the CLI
ADAPTERS = {"datasel/snakemake_entry.py", "datasel/workflow_support.py", "datasel/cli.py"}

# names under which a function would receive the object Snakemake injects into a script
RUNNER_OBJECT_NAMES = {"smk", "snakemake"}


def runner_leaks(source: str) -> list[str]:
    """Where ``source`` imports Snakemake or declares a parameter that receives its object, one line each."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "snakemake"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "snakemake":
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(p for p in (a.vararg, a.kwarg) if p)]
            name = getattr(node, "name", "<lambda>")
            found += [f"line {node.lineno}: {name}({p.arg})" for p in params if p.arg in RUNNER_OBJECT_NAMES]
    return found


def _modules() -> dict[str, list[str]]:
    return {path.relative_to(ROOT).as_posix(): runner_leaks(path.read_text())
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_checker_sees_imports_and_runner_parameters():
    leaks = runner_leaks("import snakemake.io\nfrom snakemake.script import x\nimport snakemake_extra\n"
                         "def step(smk): ...\nclass A:\n    def m(self, *, snakemake=None): ...\n"
                         "f = lambda smk: smk\ndef typed(examples, out, seed=0): ...\n")
    assert leaks == ["line 1: import snakemake.io", "line 2: from snakemake.script import ...",
                     "line 4: step(smk)", "line 6: m(snakemake)", "line 7: <lambda>(smk)"]


def test_no_library_module_imports_snakemake_or_takes_its_object():
    modules = _modules()
    assert ADAPTERS <= set(modules), "a listed module was moved or renamed: update this test"
    leaking = {m: leaks for m, leaks in modules.items() if leaks and m not in ADAPTERS}
    assert not leaking, ("steps take typed arguments (paths, config slices, seed, device); the script in "
                         f"workflow/scripts/ unpacks snakemake into them: {leaking}")
