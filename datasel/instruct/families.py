"""A mixed instruction pool from installed material, for the embedded experiment (no download).

Task families (``task`` column), each answer short and checkable by exact match:

- ``arith``: "What is 7 + 12?" → "19" (both terms below 20);
- ``add2``: "What is 47 + 38?" → "85" (two-digit terms);
- ``sub``: "What is 27 - 9?" → "18";
- ``mul``: "What is 7 * 8?" → "56" (factors 2 to 12);
- ``convert``: "How many grams are in 4 kilograms?" → "4000";
- ``count``: "How many letters are in the word: python?" → "6";
- ``reverse``: a word from standard-library docstrings → the word spelled backwards;
- ``sort``: a handful of letters → the letters in alphabetical order;
- ``upper``: "Write in capital letters: python" → "PYTHON";
- ``last``: "Which is the last item: cat, dog, fox?" → "fox";
- ``weekday``: "What day of the week was 2019-05-14?" → "Tuesday";
- ``days``: "How many days are there from 2021-03-04 to 2021-03-19?" → "15" (within one month);
- ``json``: "Write as JSON: name Ann, age 31" → '{"name": "Ann", "age": 31}';
- ``docname``: a standard-library docstring → the documented function's name;
- ``modfunc``: "Which Python module has the function dumps?" → "json";
- ``module``: "What is the Python module json for?" → the first words of its docstring.

``families`` in the config picks the pool's families (default: all); ``target_family`` need not be among them.

The pool mixes every family; the target and test files hold disjoint examples of one family only, so a selection
method that finds the relevant data should pick that family far above its base rate in the pool.
"""

from __future__ import annotations

import datetime
import functools
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

MODULES = ("json", "re", "string", "os", "pathlib", "collections", "itertools", "functools", "math", "random",
           "textwrap", "shutil", "heapq", "bisect", "statistics", "fractions", "decimal", "difflib", "csv", "glob")


Pair = tuple[str, str]
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "chair", "piano", "house", "green", "train", "bread",
         "ocean", "pencil", "garden", "window", "rabbit", "silver", "planet", "candle", "forest", "butter", "orange",
         "python", "monkey", "basket", "winter", "yellow", "bottle", "doctor")
NAMES = ("Ann", "Bob", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jill", "Kai", "Lena", "Max", "Nora")
UNITS = (("grams", "kilograms", 1000), ("centimeters", "meters", 100), ("meters", "kilometers", 1000),
         ("minutes", "hours", 60), ("seconds", "minutes", 60), ("hours", "days", 24), ("days", "weeks", 7),
         ("milliliters", "liters", 1000))


def _ask(question: str) -> str:
    return f"{question}\nAnswer: "


def _binary(rng: np.random.Generator, n: int, lo: int, hi: int, op: str) -> list[Pair]:
    a, b = rng.integers(lo, hi, n).tolist(), rng.integers(lo, hi, n).tolist()
    if op == "-":  # the larger first: answers stay non-negative
        a, b = [max(x, y) for x, y in zip(a, b)], [min(x, y) for x, y in zip(a, b)]
    value = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}[op]
    return [(_ask(f"What is {x} {op} {y}?"), str(value(x, y))) for x, y in zip(a, b)]


def _arith(rng: np.random.Generator, n: int) -> list[Pair]:
    return _binary(rng, n, 0, 20, "+")


def _add2(rng: np.random.Generator, n: int) -> list[Pair]:
    return _binary(rng, n, 10, 100, "+")


def _sub(rng: np.random.Generator, n: int) -> list[Pair]:
    return _binary(rng, n, 0, 40, "-")


def _mul(rng: np.random.Generator, n: int) -> list[Pair]:
    return _binary(rng, n, 2, 13, "*")


def _convert(rng: np.random.Generator, n: int) -> list[Pair]:
    out = []
    for u, k in zip(rng.integers(0, len(UNITS), n).tolist(), rng.integers(2, 13, n).tolist()):
        small, big, factor = UNITS[u]
        out.append((_ask(f"How many {small} are in {k} {big}?"), str(k * factor)))
    return out


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str], n: int) -> list[str]:
    return [items[i] for i in rng.integers(0, len(items), n).tolist()]


def _count(rng: np.random.Generator, n: int) -> list[Pair]:
    return [(_ask(f"How many letters are in the word: {w}?"), str(len(w))) for w in _pick(rng, _words(), n)]


def _upper(rng: np.random.Generator, n: int) -> list[Pair]:
    return [(_ask(f"Write in capital letters: {w}"), w.upper()) for w in _pick(rng, _words(), n)]


def _last(rng: np.random.Generator, n: int) -> list[Pair]:
    out = []
    for k in rng.integers(3, 6, n).tolist():
        items = [WORDS[i] for i in rng.choice(len(WORDS), size=k, replace=False).tolist()]
        out.append((_ask(f"Which is the last item: {', '.join(items)}?"), items[-1]))
    return out


def _dates(rng: np.random.Generator, n: int) -> list[datetime.date]:
    start = datetime.date(1990, 1, 1).toordinal()
    return [datetime.date.fromordinal(start + d) for d in rng.integers(0, 40 * 365, n).tolist()]


def _weekday(rng: np.random.Generator, n: int) -> list[Pair]:
    return [(_ask(f"What day of the week was {d.isoformat()}?"), d.strftime("%A")) for d in _dates(rng, n)]


def _days(rng: np.random.Generator, n: int) -> list[Pair]:
    out = []
    for d, a, b in zip(_dates(rng, n), rng.integers(1, 29, n).tolist(), rng.integers(1, 29, n).tolist()):
        lo, hi = d.replace(day=min(a, b)), d.replace(day=max(a, b))
        question = f"How many days are there from {lo.isoformat()} to {hi.isoformat()}?"
        out.append((_ask(question), str(hi.day - lo.day)))
    return out


def _json(rng: np.random.Generator, n: int) -> list[Pair]:
    return [(_ask(f"Write as JSON: name {name}, age {age}"), json.dumps({"name": name, "age": age}))
            for name, age in zip(_pick(rng, NAMES, n), rng.integers(18, 80, n).tolist())]


@functools.cache
def _docs() -> pl.DataFrame:
    return stdlib_docstrings(MODULES[:8], per_module=60, max_chars=160)


@functools.cache
def _words() -> tuple[str, ...]:
    text = " ".join(_docs().get_column("text").to_list())
    return tuple(sorted({w.lower() for w in re.findall(r"[A-Za-z]{4,8}", text)}))


def _docname(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    docs = _docs()
    rows = list(zip(docs.get_column("id").to_list(), docs.get_column("text").to_list()))
    pick = rng.integers(0, len(rows), n)
    return [(f"Which function is this?\n{rows[i][1].splitlines()[0][:100]}\nAnswer: ", rows[i][0].split(".")[-1])
            for i in pick.tolist()]


def _modfunc(rng: np.random.Generator, n: int) -> list[Pair]:
    ids = _docs().get_column("id").to_list()
    return [(_ask(f"Which Python module has the function {i.split('.')[-1]}?"), i.split(".")[0])
            for i in _pick(rng, ids, n)]


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


MAKERS = {"arith": _arith, "add2": _add2, "sub": _sub, "mul": _mul, "convert": _convert, "count": _count,
          "reverse": _reverse, "sort": _sort, "upper": _upper, "last": _last, "weekday": _weekday, "days": _days,
          "json": _json, "docname": _docname, "modfunc": _modfunc, "module": _module}
FAMILIES = tuple(MAKERS)


def generate(cfg: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """``pool`` (``per_family`` rows of every family), ``target`` and ``test`` (of ``target_family`` only, disjoint
    from each other and from the pool's rows by prompt)."""
    fam = cfg.get("target_family", "arith")
    if fam not in FAMILIES:
        raise ConfigError(f"unknown task family {fam!r}", field="data.instruct.generate.target_family",
                          fix=f"use one of {', '.join(FAMILIES)}")
    names = list(cfg.get("families") or FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"task families {unknown or names} are unknown or repeated",
                          field="data.instruct.generate.families",
                          fix=f"list some of {', '.join(FAMILIES)} once each")
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    per, n_target, n_test = int(cfg.get("per_family", 100)), int(cfg.get("target", 40)), int(cfg.get("test", 100))
    pool = []
    for name in names:
        pool += [{"prompt": p, "completion": c, "task": name} for p, c in MAKERS[name](rng, per)]
    seen = {r["prompt"] for r in pool}
    held: list[dict[str, str]] = []
    for p, c in MAKERS[fam](rng, 50 * (n_target + n_test)):  # draw until enough unseen prompts
        if p not in seen and len(held) < n_target + n_test:
            seen.add(p)
            held.append({"prompt": p, "completion": c, "task": fam})
    if len(held) < n_target + n_test:
        raise ConfigError(f"family {fam!r} has only {len(held)} prompts outside the pool",
                          field="data.instruct.generate", fix="lower per_family, target or test")
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

    With ``data.instruct.generate`` in the config the three files are outputs of a rule, so Snakemake reruns it
    (deleting all three first) as soon as one is missing or ``--forceall`` is given: a user's own pool and target
    would be replaced by generated data without a word. This runs when the rule file is read, before any job.
    """
    for role, path in paths.items():
        path = Path(path)
        if path.exists() and not written_by_generate(path):
            raise ConfigError(f"data.instruct.{role} '{path}' exists and was not written by data.instruct.generate, "
                              "which would replace it (and the other data files) with generated data",
                              file=path, field="data.instruct.generate",
                              fix="to use your own files, remove data.instruct.generate from the config; to "
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
