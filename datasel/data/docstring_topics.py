"""A labelled text-classification set mined from installed packages: docstrings labelled by the package they
document (``stdlib``, ``torch``, ``numpy``, ``sklearn``, ``matplotlib``, ``pandas``).

Every documented function and class (dunder names, tests, GUIs and vendored code skipped, as in
:mod:`datasel.data.stdlib_text`) gives one example: the first paragraph of its docstring. Each class keeps the same
number of examples, drawn by a seeded hash of the text (so not biased towards alphabetically early modules), so
accuracy reads against chance (1/6). Deterministic for given installed versions; nothing is downloaded.

It is the builtin data source ``data.source: docstring_topics`` (options under ``data.docstring_topics``:
``packages``, ``per_class``, ``seed``, ``min_chars``, ``max_chars``), so a config runs on it with no separate
step. The same rows can be written out, e.g. to read them or to use them as a user's file::

    python -m datasel.data.docstring_topics data/docstring_topics.jsonl
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import logging
from pathlib import Path

import polars as pl

from datasel.data.stdlib_text import _first_paragraph, _module_name, _source_files, stdlib_root
from datasel.store import atomic_path

log = logging.getLogger(__name__)

PACKAGES = ("stdlib", "torch", "numpy", "sklearn", "matplotlib", "pandas")


def package_root(name: str) -> Path | None:
    if name == "stdlib":
        return stdlib_root()
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _docstrings(root: Path, min_chars: int, max_chars: int) -> list[tuple[str, str]]:
    out = []
    for f in _source_files(root):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # templates and legacy encodings
        module = _module_name(root, f)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and not node.name.startswith("__"):
                doc = ast.get_docstring(node)
                text = _first_paragraph(doc)[:max_chars] if doc else ""
                if len(text) >= min_chars:
                    out.append((f"{module}:{node.name}:{node.lineno}", text))
    return out


def docstring_topics(packages: tuple[str, ...] | list[str] = PACKAGES, per_class: int = 900, seed: int = 0,
                     min_chars: int = 30, max_chars: int = 400) -> pl.DataFrame:
    """Rows ``id, text, label`` with ``per_class`` rows per package (fewer if it has fewer); texts are unique.

    ``packages`` are importable package names (``stdlib`` is the standard library as a whole; a stdlib package
    such as ``json`` or ``email`` works too). Which docstrings a class keeps is a hash of ``seed`` and the text, so
    another seed draws another sample of the same population; the rows are the same on every call and machine
    with the same installed versions.
    """
    rows, seen = [], set()
    for pkg in packages:
        root = package_root(pkg)
        if root is None:
            log.warning("package %s is not installed; skipped", pkg)
            continue
        found = sorted(_docstrings(root, min_chars, max_chars),
                       key=lambda r: (hashlib.sha1(f"{seed}\x00{r[1]}".encode()).hexdigest(), r[0]))
        kept = 0
        for ident, text in found:
            if kept >= per_class:
                break
            if text not in seen:  # the same docstring under two packages would be an unlearnable example
                seen.add(text)
                rows.append({"id": f"{pkg}/{ident}", "text": text, "label": pkg})
                kept += 1
        log.info("%s: %d of %d docstrings kept", pkg, kept, len(found))
    return pl.DataFrame(rows, schema={"id": pl.String, "text": pl.String, "label": pl.String})


def main(argv: list[str] | None = None) -> None:
    """Write the rows of ``data.source: docstring_topics`` (same options, same defaults) to a jsonl/parquet file."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m datasel.data.docstring_topics", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="data/docstring_topics.jsonl", help=".jsonl or .parquet")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES))
    ap.add_argument("--per-class", type=int, default=900)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-chars", type=int, default=30)
    ap.add_argument("--max-chars", type=int, default=400)
    args = ap.parse_args(argv)
    out = Path(args.out)
    df = docstring_topics(args.packages, per_class=args.per_class, seed=args.seed, min_chars=args.min_chars,
                          max_chars=args.max_chars)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            df.write_parquet(tmp)
        else:
            df.write_ndjson(tmp)
    print(f"{out}: {df.height} examples, {df.get_column('label').value_counts().sort('label').rows()}")


if __name__ == "__main__":
    main()
