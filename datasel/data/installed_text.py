"""Text domains for a pretrained LM, mined from material installed on the machine, chunked in the LM's tokens.

Sources (each one a domain; any of them may instead be the held-out specific set):

* ``code`` / ``docstrings`` — the code lines and the docstring prose of the Python packages installed in
  site-packages (split by :func:`datasel.data.domains._mine_module`, as the stdlib character-level domains are);
* ``licenses`` — the license texts shipped with those packages (``*.dist-info/LICENSE*``, ``licenses/``);
* ``metadata`` — the packages' long descriptions (the body of ``*.dist-info/METADATA``: their READMEs);
* ``reference`` — the Python language reference shipped with the standard library (``pydoc_data.topics``);
* ``manpages`` — the English manual pages (``/usr/share/man/man*/*``), roff markup stripped.

Every file is tokenized on its own and cut into non-overlapping windows of ``chunk_tokens`` tokens, so a chunk never
spans two files and each one's origin is known; windows whose decoded text does not tokenize back to exactly
``chunk_tokens`` tokens (a cut inside a merged word) are skipped, so every row is one width. Files are listed sorted,
duplicates by content dropped (many packages ship the same license), then visited in a seeded order; at most
``per_file`` chunks come from one file, so a domain spreads over many files. The specific set's train and test
chunks come from disjoint files, the test files first (so the held-out chunks do not change with ``n_specific``);
``exclude`` drops files by name (a generated family of thousands of near-identical
pages would make a domain one template). ``meta['files']`` records, per domain and split, the files the chunks came
from.
"""

from __future__ import annotations

import ast
import fnmatch
import gzip
import hashlib
import logging
import random
import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from datasel.data.domains import _mine_module, domain_sizes, text_domain_table
from datasel.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCES = ("code", "docstrings", "licenses", "metadata", "reference", "manpages")
DEFAULTS: dict[str, Any] = {
    "domains": ["code", "docstrings", "licenses", "metadata", "reference"],
    "specific": "manpages",
    "chunk_tokens": 64,
    "per_domain": 200,
    "n_specific": 16,
    "n_specific_test": 48,
    "per_file": 4,
    "max_files": 400,
    "seed": 0,
}

# ------------------------------------------------------------------------------------------------ file listings

Doc = tuple[str, Callable[[], str]]  # (file name relative to its root, reader of its text)


def _read(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _py_files(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.py") if "__pycache__" not in p.parts)


def _mined(site: Path, part: str) -> list[Doc]:
    return [(str(p.relative_to(site)), lambda p=p: _mine_module(_read(p))[part]) for p in _py_files(site)]


def _licenses(site: Path) -> list[Doc]:
    files = sorted({p for d in site.glob("*.dist-info") for p in d.rglob("*") if p.is_file()
                    and (p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))
                         or "licenses" in p.relative_to(d).parts)})
    return [(str(p.relative_to(site)), lambda p=p: _read(p)) for p in files]


def _metadata_body(text: str) -> str:
    """The long description: what follows the RFC 822 header block (a blank line ends it)."""
    head, _, body = text.partition("\n\n")
    return body.strip()


def _metadata(site: Path) -> list[Doc]:
    return [(str(p.relative_to(site)), lambda p=p: _metadata_body(_read(p)))
            for p in sorted(site.glob("*.dist-info/METADATA"))]


def _reference(stdlib: Path) -> list[Doc]:
    """One document per topic of ``pydoc_data/topics.py`` (a dict literal, read without importing it, so the
    ``stdlib`` root chosen is the one read)."""
    path = stdlib / "pydoc_data" / "topics.py"
    if not path.is_file():
        return []
    topics: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
    return [(f"pydoc_data/topics.py:{k}", lambda k=k: topics[k]) for k in sorted(topics)]


_ROFF_ESCAPE = re.compile(r"\\f(\(..|\[[^]]*\]|.)|\\\*(\(..|\[[^]]*\]|.)|\\s[-+]?\d+|\\[&|^%:]")
_ROFF_ARG = re.compile(r'"([^"]*)"|(\S+)')
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_ROFF_GLYPH = re.compile(r"\\\((..)|\\\[([^]]*)\]")
_GLYPHS = {"em": "--", "en": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "bu": "*",
           "hy": "-", "mi": "-", "ga": "`", "ti": "~", "ha": "^", "co": "(c)", "rg": "(R)", "bv": "|", "lh": "",
           "rh": ""}


def roff_text(src: str) -> str:
    """Plain text of a roff (man / mdoc) page: requests dropped, their arguments kept, font escapes removed."""
    out: list[str] = []
    for line in src.splitlines():
        if line.startswith((".\\\"", "'\\\"", '.\\"')) or line.startswith(".so "):
            continue
        if line.startswith((".", "'")):
            req, _, rest = line[1:].strip().partition(" ")
            args = [a or b for a, b in _ROFF_ARG.findall(rest)]
            if not args:
                if out and out[-1]:
                    out.append("")  # a paragraph request with nothing to show: a paragraph break
                continue
            # .BR a b, .IR ...: alternating fonts, arguments printed with no space between them
            line = ("" if req in _ALTERNATING else " ").join(args)
        line = _ROFF_ESCAPE.sub("", line)
        line = _ROFF_GLYPH.sub(lambda m: _GLYPHS.get(m.group(1) or m.group(2), ""), line)
        out.append(line.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _manpages(man: Path) -> list[Doc]:
    # English pages only (man1 .. man9); a ".so" page just includes another one and comes out empty
    files = sorted(p for d in sorted(man.glob("man[1-9]")) for p in d.iterdir() if p.is_file())
    return [(str(p.relative_to(man)), lambda p=p: roff_text(_read(p))) for p in files]


LISTERS: dict[str, tuple[str, Callable[[Path], list[Doc]]]] = {
    "code": ("site_packages", lambda r: _mined(r, "code")),
    "docstrings": ("site_packages", lambda r: _mined(r, "docstrings")),
    "licenses": ("site_packages", _licenses),
    "metadata": ("site_packages", _metadata),
    "reference": ("stdlib", _reference),
    "manpages": ("man", _manpages),
}


def default_roots() -> dict[str, str]:
    paths = sysconfig.get_paths()
    return {"site_packages": paths["purelib"], "stdlib": paths["stdlib"], "man": "/usr/share/man"}


# ---------------------------------------------------------------------------------------------------- chunking


def _windows(tok: Any, text: str, n: int, limit: int) -> Iterator[str]:
    """Up to ``limit`` non-overlapping ``n``-token windows of ``text`` whose decoded text re-tokenizes to ``n``."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    got = 0
    for s in range(0, len(ids) - n + 1, n):
        chunk = tok.decode(ids[s : s + n], clean_up_tokenization_spaces=False)
        if len(tok(chunk, add_special_tokens=False)["input_ids"]) == n and chunk.strip():
            yield chunk
            got += 1
            if got == limit:
                return


def _chunk_docs(tok: Any, docs: list[Doc], want: int, cfg: dict[str, Any], rng: random.Random,
                seen: set[str]) -> list[tuple[str, str]]:
    """(file, chunk) pairs: files in a seeded order, duplicates by content skipped, until ``want`` chunks, at most
    ``max_files`` files read. ``seen`` (chunk texts already used by another domain) is extended."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    out: list[tuple[str, str]] = []
    hashes: set[str] = set()
    for i in order[: int(cfg["max_files"])]:
        name, read = docs[i]
        try:
            text = read()
        except (OSError, ValueError):
            continue  # an unreadable or broken file is skipped, as the stdlib miner does
        digest = hashlib.sha256(text.encode()).hexdigest()
        if not text.strip() or digest in hashes:
            continue
        hashes.add(digest)
        for chunk in _windows(tok, text, int(cfg["chunk_tokens"]), int(cfg["per_file"])):
            if chunk not in seen:
                seen.add(chunk)
                out.append((name, chunk))
        if len(out) >= want:
            break
    return out[:want]


def _check(cfg: dict[str, Any]) -> None:
    names = list(cfg["domains"])
    bad = sorted(set(names + [cfg["specific"]]) - set(SOURCES))
    if bad or not names:
        raise ConfigError(f"unknown or missing installed-text source(s) {bad or names}", field="dga.data.domains",
                          fix=f"use a non-empty subset of {list(SOURCES)}")
    if cfg["specific"] in names:
        raise ConfigError(f"the specific source '{cfg['specific']}' is also a generic domain",
                          field="dga.data.specific", fix="hold one source out of dga.data.domains")
    for key in ("chunk_tokens", "n_specific", "n_specific_test", "per_file", "max_files"):
        if int(cfg[key]) < (2 if key == "chunk_tokens" else 1):
            raise ConfigError(f"{key} = {cfg[key]} is too small", field=f"dga.data.{key}", fix="use a positive size")
    if cfg.get("tokenizer") is None:
        raise ConfigError("installed_text chunks text in a language model's tokens, and no tokenizer is named",
                          field="dga.data.tokenizer",
                          fix="use a causal_lm dga.model (its tokenizer is taken) or set dga.data.tokenizer")


def _tokenizer(spec: Any) -> Any:
    if hasattr(spec, "decode"):
        return spec  # an already loaded tokenizer (tests, notebooks)
    from datasel.models.causal_lm import load_tokenizer
    from datasel.models.locate import lm_source

    return load_tokenizer(lm_source(spec, "dga.data.tokenizer"), "dga.data.tokenizer")


def installed_text_domains(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Token-chunked text domains from installed packages, the stdlib reference and manual pages.

    cfg (``dga.data``): ``domains`` (generic sources), ``specific`` (the held-out source), ``chunk_tokens``,
    ``per_domain`` (chunks per generic domain, or a mapping), ``n_specific`` / ``n_specific_test``, ``per_file``,
    ``max_files`` (files read per source at most), ``exclude`` (glob patterns over the file names relative to their
    root, e.g. ``man1/gcloud*``), ``roots`` (``site_packages``, ``stdlib``, ``man`` folders; default
    this interpreter's and /usr/share/man), ``tokenizer`` (a model source: ``{source: smollm2}``, ``{path: ...}``),
    ``seed``.
    """
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    _check(cfg)
    roots = {**default_roots(), **(cfg.get("roots") or {})}
    names = sorted(cfg["domains"])
    specific = str(cfg["specific"])
    sizes = domain_sizes(cfg["per_domain"], names, "dga.data.per_domain")
    n_spe, n_test = int(cfg["n_specific"]), int(cfg["n_specific_test"])
    tok = _tokenizer(cfg["tokenizer"])
    exclude = [str(p) for p in cfg.get("exclude") or []]
    seen: set[str] = set()
    rows: list[tuple[str, str, str]] = []  # (domain, split, text)
    files: dict[str, dict[str, list[str]]] = {}

    def docs_of(source: str) -> list[Doc]:
        key, lister = LISTERS[source]
        root = Path(roots[key])
        docs = [d for d in (lister(root) if root.is_dir() else [])
                if not any(fnmatch.fnmatchcase(d[0], pat) for pat in exclude)]
        if not docs:
            raise DataError(f"no '{source}' material found under {root}", file=root,
                            field=f"dga.data.roots.{key}",
                            fix=f"point dga.data.roots.{key} at a folder that has it, or drop '{source}' "
                            "from dga.data.domains / dga.data.specific")
        return docs

    # The specific source first, split by file so no test chunk shares a file with a train chunk.
    rng = random.Random(int(cfg["seed"]))
    # a few more than asked: the file that crosses from train to test gives its surplus to neither
    spe = _chunk_docs(tok, docs_of(specific), n_spe + n_test + int(cfg["per_file"]), cfg, rng, seen)
    by_file: dict[str, list[str]] = {}
    for name, chunk in spe:
        by_file.setdefault(name, []).append(chunk)
    # Test files first in the seeded order: configs that differ only in n_specific measure on the same held-out
    # chunks, and a smaller specific set is the start of a larger one.
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for name in by_file:  # already in the seeded file order
        (test if len(test) < n_test else train).extend((name, c) for c in by_file[name])
    train, test = train[:n_spe], test[:n_test]
    if len(train) < n_spe or len(test) < n_test:
        raise DataError(f"only {len(spe)} chunks of '{specific}' found ({n_spe} + {n_test} asked, train and test "
                        "from different files)", field="dga.data.n_specific",
                        fix="lower n_specific / n_specific_test or chunk_tokens, or raise max_files / per_file")
    rows += [(specific, "train", c) for _, c in train] + [(specific, "test", c) for _, c in test]
    files[specific] = {"train": sorted({f for f, _ in train}), "test": sorted({f for f, _ in test})}
    for name in names:
        got = _chunk_docs(tok, docs_of(name), sizes[name], cfg, random.Random(f"{cfg['seed']}:{name}"), seen)
        if len(got) < sizes[name]:
            raise DataError(f"only {len(got)} chunks of '{name}' found, {sizes[name]} asked",
                            field="dga.data.per_domain", fix="lower per_domain or raise max_files / per_file")
        rows += [(name, "train", c) for _, c in got]
        files[name] = {"train": sorted({f for f, _ in got})}
    df = text_domain_table("installed_text", rows)
    meta = {
        "kind": "text",
        "chunk_tokens": int(cfg["chunk_tokens"]),
        "block_size": int(cfg["chunk_tokens"]) - 1,
        "domains": names,
        "specific": specific,
        "roots": {LISTERS[s][0]: roots[LISTERS[s][0]] for s in [*names, specific]},
        "files": files,
    }
    log.info("installed text domains: %s", df.group_by("domain", "split").len().sort("domain").rows())
    return df, meta
