"""A mixed instruction pool from installed material, for the embedded experiment (no download).

Task families (``task`` column):

- ``arith``: "What is 7 + 12?" → "19";
- ``docname``: a standard-library docstring → the documented function's name;
- ``reverse``: a word from those docstrings → the word spelled backwards;
- ``sort``: a handful of letters → the letters in alphabetical order;
- ``module``: "What is the Python module json for?" → the first words of its docstring.

The pool mixes every family; the target and test files hold disjoint examples of one family only, so a selection
method that finds the relevant data should pick that family far above its base rate in the pool.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.errors import ConfigError
from datasel.features.textdata import stdlib_docstrings
from datasel.store import atomic_path
from datasel.store.fingerprint import file_record, matches_record

FAMILIES = ("arith", "docname", "reverse", "sort", "module")
MODULES = ("json", "re", "string", "os", "pathlib", "collections", "itertools", "functools", "math", "random",
           "textwrap", "shutil", "heapq", "bisect", "statistics", "fractions", "decimal", "difflib", "csv", "glob")


def _arith(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    a, b = rng.integers(0, 20, n), rng.integers(0, 20, n)
    return [(f"What is {x} + {y}?\nAnswer: ", str(x + y)) for x, y in zip(a.tolist(), b.tolist())]


def _docs() -> pl.DataFrame:
    return stdlib_docstrings(MODULES[:8], per_module=60, max_chars=160)


def _words() -> list[str]:
    text = " ".join(_docs().get_column("text").to_list())
    return sorted({w.lower() for w in re.findall(r"[A-Za-z]{4,8}", text)})


def _docname(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    docs = _docs()
    rows = list(zip(docs.get_column("id").to_list(), docs.get_column("text").to_list()))
    pick = rng.integers(0, len(rows), n)
    return [(f"Which function is this?\n{rows[i][1].splitlines()[0][:100]}\nAnswer: ", rows[i][0].split(".")[-1])
            for i in pick.tolist()]


def _reverse(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    words = _words()
    return [(f"Reverse the word: {w}\nAnswer: ", w[::-1]) for w in (words[i] for i in rng.integers(0, len(words), n))]


def _sort(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for _ in range(n):
        chosen = rng.choice(letters, size=int(rng.integers(3, 6)), replace=False).tolist()
        out.append((f"Sort the letters: {' '.join(chosen)}\nAnswer: ", " ".join(sorted(chosen))))
    return out


def _module(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    purpose = {}
    for name in MODULES:
        doc = (importlib.import_module(name).__doc__ or "").strip().splitlines()
        purpose[name] = " ".join(doc[0].split()[:8]) if doc else name
    names = sorted(purpose)
    return [(f"What is the Python module {m} for?\nAnswer: ", purpose[m])
            for m in (names[i] for i in rng.integers(0, len(names), n))]


MAKERS = {"arith": _arith, "docname": _docname, "reverse": _reverse, "sort": _sort, "module": _module}


def generate(cfg: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """``pool`` (``per_family`` rows of every family), ``target`` and ``test`` (of ``target_family`` only, disjoint
    from each other and from the pool's rows by prompt)."""
    fam = cfg.get("target_family", "arith")
    if fam not in FAMILIES:
        raise ConfigError(f"unknown task family {fam!r}", field="instruct.data.generate.target_family",
                          fix=f"use one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    per, n_target, n_test = int(cfg.get("per_family", 100)), int(cfg.get("target", 40)), int(cfg.get("test", 100))
    pool = []
    for name in FAMILIES:
        pool += [{"prompt": p, "completion": c, "task": name} for p, c in MAKERS[name](rng, per)]
    seen = {r["prompt"] for r in pool}
    held: list[dict[str, str]] = []
    for p, c in MAKERS[fam](rng, 50 * (n_target + n_test)):  # draw until enough unseen prompts
        if p not in seen and len(held) < n_target + n_test:
            seen.add(p)
            held.append({"prompt": p, "completion": c, "task": fam})
    if len(held) < n_target + n_test:
        raise ConfigError(f"family {fam!r} has only {len(held)} prompts outside the pool",
                          field="instruct.data.generate", fix="lower per_family, target or test")
    order = rng.permutation(len(pool))
    return {"pool": pl.DataFrame([pool[i] for i in order]), "target": pl.DataFrame(held[:n_target]),
            "test": pl.DataFrame(held[n_target:])}


def _stamp(path: Path) -> Path:
    """The hidden file beside a generated file that records its size and digest: the proof that we wrote it."""
    return path.with_name(f".{path.name}.datasel-generated")


def written_by_generate(path: str | Path) -> bool:
    """Whether ``path`` is, byte for byte, a file :func:`write` wrote (its stamp matches)."""
    try:
        return matches_record(path, json.loads(_stamp(Path(path)).read_text()))
    except (OSError, ValueError):
        return False


def check_replaceable(paths: dict[str, str | Path]) -> None:
    """Refuse to generate over a file :func:`write` did not write.

    With ``instruct.data.generate`` in the config the three files are outputs of a rule, so Snakemake reruns it
    (deleting all three first) as soon as one is missing or ``--forceall`` is given: a user's own pool and target
    would be replaced by generated data without a word. This runs when the rule file is read, before any job.
    """
    for role, path in paths.items():
        path = Path(path)
        if path.exists() and not written_by_generate(path):
            raise ConfigError(f"instruct.data.{role} '{path}' exists and was not written by instruct.data.generate, "
                              "which would replace it (and the other data files) with generated data",
                              file=path, field="instruct.data.generate",
                              fix="to use your own files, remove instruct.data.generate from the config; to "
                                  f"generate new data, move '{path}' away first")


def write(cfg: dict[str, Any], paths: dict[str, str | Path]) -> None:
    check_replaceable(paths)
    for role, df in generate(cfg).items():
        Path(paths[role]).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths[role]) as tmp:
            df.write_ndjson(tmp)
        stamp = _stamp(Path(paths[role]))
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps(file_record(paths[role])))


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or ["data/instruct"])[0])
    write({}, {r: folder / f"{r}.jsonl" for r in ("pool", "target", "test")})
    print(folder)


if __name__ == "__main__":
    main()
