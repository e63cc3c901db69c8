"""Real text already on every machine: the Python standard library's source and prose.

Two pair sets for GAPrune's embedded default, both mined offline and deterministically:

- **domain** (code retrieval): a function's docstring summary → the function's source with its docstring removed
  (so the query text never appears verbatim in the positive);
- **general** (natural language): a sentence of prose → the rest of its paragraph, from the language reference
  shipped as ``pydoc_data.topics`` and from module docstrings.

Hard negatives are added later by :mod:`datasel.data.triplets` (nearest wrong positive by faiss).
"""

from __future__ import annotations

import ast
import logging
import re
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Folders whose files are tests, GUIs or vendored code: their docstrings are not representative of the library.
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo", "ensurepip", "__pycache__"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)\"'])[.!?](?=\s+[A-Z\"'(])")


@dataclass(frozen=True)
class Pair:
    """A (query, positive) pair with a stable origin, e.g. ``json.decoder:JSONDecoder.decode``."""

    origin: str
    query: str
    positive: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    files = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).parts
        if any(p in _SKIP_DIRS for p in parts[:-1]) or f.name.startswith("test_"):
            continue
        files.append(f)
    return files


def _module_name(root: Path, f: Path) -> str:
    rel = f.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def _strip_docstring(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's source without its docstring statement (line-based, relative to the function's start)."""
    doc_node = node.body[0]
    lines = source.splitlines()
    start, end = doc_node.lineno - node.lineno, doc_node.end_lineno - node.lineno  # type: ignore[operator]
    kept = lines[:start] + lines[end + 1 :]
    return "\n".join(kept).strip("\n")


def mine_function_pairs(
    root: Path | None = None,
    min_query_chars: int = 30,
    min_body_lines: int = 2,
    max_positive_chars: int = 2000,
) -> list[Pair]:
    """Docstring summary → function source pairs from every standard-library module (sorted, so deterministic)."""
    root = root or stdlib_root()
    pairs: list[Pair] = []
    seen: set[str] = set()
    for f in _source_files(root):
        try:
            text = f.read_text(encoding="utf-8")
            tree = ast.parse(text)
            lines = text.splitlines()
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in legacy encodings: not worth mining
        module = _module_name(root, f)
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            parent, prefix = stack.pop()
            for node in ast.iter_child_nodes(parent):
                if isinstance(node, ast.ClassDef):
                    stack.append((node, f"{prefix}{node.name}."))
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                query = _first_paragraph(doc)
                if len(query) < min_query_chars or node.end_lineno is None:
                    continue
                # slicing the file's lines once per function: ast.get_source_segment re-splits the whole file
                src = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
                body = _strip_docstring(src, node)
                if body.count("\n") < min_body_lines:
                    continue
                body = body[:max_positive_chars]
                if body in seen or query in seen:
                    continue  # overloads and copies: two identical positives would make the task ill-posed
                seen.update((body, query))
                pairs.append(Pair(f"{module}:{prefix}{node.name}", query, body))
    log.info("mined %d docstring→function pairs from %s", len(pairs), root)
    return pairs


def _is_prose(par: str) -> bool:
    """Prose, not grammar, code or tables: mostly letters, no doctest prompts, no indented blocks."""
    if ">>>" in par or "::=" in par or "|" in par or "***" in par or "===" in par or "---" in par:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in par)
    return letters / max(1, len(par)) > 0.85


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        # indented blocks are either code samples (rejected by _is_prose) or the bodies of definitions (kept)
        par = " ".join(block.split())
        if _is_prose(par):
            out.append(par)
    return out


def _split_first_sentence(par: str) -> tuple[str, str] | None:
    m = _SENTENCE_END.search(par)
    if not m:
        return None
    first, rest = par[: m.end()].strip(), par[m.end() :].strip()
    return first, rest


def mine_prose_pairs(
    root: Path | None = None, min_query_chars: int = 40, min_positive_chars: int = 80, max_positive_chars: int = 1500
) -> list[Pair]:
    """First sentence → rest of paragraph, from the language reference (pydoc topics) and module docstrings."""
    root = root or stdlib_root()
    docs: list[tuple[str, str]] = []
    try:
        from pydoc_data import topics  # the reference manual's prose, shipped with CPython

        docs += [(f"reference:{k}", v) for k, v in sorted(topics.topics.items())]
    except ImportError:  # pragma: no cover - stripped Python builds
        log.warning("pydoc_data.topics is missing; general pairs come from module docstrings only")
    for f in _source_files(root):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = _module_name(root, f)
        doc = ast.get_docstring(tree)
        if doc:
            docs.append((f"module:{module}", doc))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = ast.get_docstring(node)
                if inner and "\n\n" in inner:
                    # the paragraphs after the summary: the summary is the domain set's query, kept out of here
                    docs.append((f"doc:{module}:{node.name}", inner.split("\n\n", 1)[1]))
    pairs: list[Pair] = []
    seen: set[str] = set()
    for origin, text in docs:
        for i, par in enumerate(_paragraphs(text)):
            split = _split_first_sentence(par)
            if split is None:
                continue
            query, positive = split
            if len(query) < min_query_chars or len(positive) < min_positive_chars or query in seen:
                continue
            seen.add(query)
            pairs.append(Pair(f"{origin}#{i}", query, positive[:max_positive_chars]))
    log.info("mined %d sentence→paragraph prose pairs", len(pairs))
    return pairs
