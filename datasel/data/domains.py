"""Multi-domain data for online data mixing (DGA, METHODS.md §2).

Two generators, each returning an examples frame (schema "examples" with a ``domain`` column) and a meta dict:

* :func:`mnist1d_domains` — one MNIST-1D dataset per generator setting (shift, scale, iid noise, correlated noise,
  shear, ...). Each domain is the same 10-class task seen through a different corruption; a held-out setting is the
  specific (target) domain, with a few labelled training examples and a larger test split to measure its loss.
* :func:`stdlib_text_domains` — character-level text chunks mined from the Python standard library installed here:
  code, comments, docstrings, regression tests and the pydoc reference topics; the specific domain is the interactive
  ``>>>`` sessions found in docstrings and docs (removed from the other domains so the test split never leaks).

In both, the generic pool is every ``split == "train"`` row outside the specific domain; the specific domain has
``train`` rows (the small set DGA aligns to) and ``test`` rows (where the final specific-set loss is measured).
"""

from __future__ import annotations

import ast
import io
import logging
import random
import sysconfig
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.data.ids import content_ids
from datasel.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Every domain starts from mild settings and turns one generator knob up, so the domains differ by one corruption
# each; the held-out target combines several at values no single domain uses.
MNIST1D_BASE: dict[str, Any] = {
    "scale_coeff": 0.1,
    "max_translation": 4,
    "corr_noise_scale": 0.05,
    "iid_noise_scale": 0.01,
    "shear_scale": 0.1,
}
MNIST1D_DOMAINS: dict[str, dict[str, Any]] = {
    "clean": {},
    "shift": {"max_translation": 48},
    "scale": {"scale_coeff": 1.2},
    "iid_noise": {"iid_noise_scale": 0.4},
    "corr_noise": {"corr_noise_scale": 0.8},
    "shear": {"shear_scale": 1.5},
}
# The target is MNIST-1D's own default setting (Greydanus 2020): large shifts, moderate shear and correlated noise.
MNIST1D_TARGET: dict[str, Any] = {"scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25,
                                  "iid_noise_scale": 0.02, "shear_scale": 0.75}


def domain_sizes(spec: int | dict[str, int], names: list[str], where: str) -> dict[str, int]:
    """Examples per domain: one number for all, or a mapping name -> size (unequal sizes make the natural
    mixture differ from the uniform one)."""
    if isinstance(spec, dict):
        missing = sorted(set(names) - set(spec))
        if missing:
            raise ConfigError(f"no size for domain(s) {missing}", field=where, fix="give every domain a size")
        sizes = {n: int(spec[n]) for n in names}
    else:
        sizes = dict.fromkeys(names, int(spec))
    bad = [n for n, v in sizes.items() if v < 1]
    if bad:
        raise ConfigError(f"domain(s) {bad} would be empty", field=where, fix="use sizes >= 1")
    return sizes


def _mnist1d_block(settings: dict[str, Any], n: int, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in {**MNIST1D_BASE, **settings}.items():
        if not hasattr(args, key) or key in ("url", "seed", "num_samples", "train_split"):
            raise ConfigError(
                f"unknown MNIST-1D generator setting '{key}'",
                field=where,
                fix="use generator knobs such as scale_coeff, max_translation, corr_noise_scale, iid_noise_scale, "
                "shear_scale, padding, template_len, final_seq_length",
            )
        setattr(args, key, value)
    if int(args.max_translation) < 1:
        raise ConfigError("max_translation must be >= 1 (mnist1d draws a shift in [0, max_translation))",
                          field=f"{where}.max_translation", fix="use 1 for no shift")
    # make_dataset draws samples_per_class = num_samples // 10, so round up to whole classes.
    args.num_samples = int(np.ceil(n / 10) * 10)
    args.train_split = 1.0
    args.seed = int(seed)
    ds = make_dataset(args)
    return ds["x"][:n].astype(np.float32), ds["y"][:n].astype(np.int64)


def mnist1d_domains(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """MNIST-1D domains from different generator settings, plus a held-out specific domain.

    cfg: ``per_domain`` (generic pool examples per domain), ``domains`` (name -> generator overrides; default
    :data:`MNIST1D_DOMAINS`), ``specific`` (name), ``specific_settings`` (overrides for the held-out setting),
    ``n_specific`` (labelled specific examples the mixing rule may use, ~100), ``n_specific_test``, ``seed``.
    """
    domains = dict(MNIST1D_DOMAINS if cfg.get("domains") is None else cfg["domains"])
    specific = str(cfg.get("specific", "target"))
    sizes = domain_sizes(cfg.get("per_domain", 1500), sorted(domains), "dga.data.per_domain")
    n_spe = int(cfg.get("n_specific", 100))
    n_test = int(cfg.get("n_specific_test", 1000))
    seed = int(cfg.get("seed", 0))
    if not domains:
        raise ConfigError("no generic domains given", field="dga.data.domains", fix="name at least one domain")
    if specific in domains:
        raise ConfigError(f"the specific domain '{specific}' is also a generic domain", field="dga.data.specific",
                          fix="give the held-out setting a name no generic domain uses")
    if n_spe < 1 or n_test < 1:
        raise ConfigError("n_specific and n_specific_test must be >= 1", field="dga.data", fix="use positive sizes")
    xs, ys, doms, splits = [], [], [], []
    for i, (name, settings) in enumerate(sorted(domains.items())):
        x, y = _mnist1d_block(dict(settings or {}), sizes[name], seed * 1000 + i + 1, f"dga.data.domains.{name}")
        xs.append(x)
        ys.append(y)
        doms += [name] * len(y)
        splits += ["train"] * len(y)
    x, y = _mnist1d_block(dict(cfg.get("specific_settings") or MNIST1D_TARGET), n_spe + n_test, seed * 1000 + 999,
                          "dga.data.specific_settings")
    xs.append(x)
    ys.append(y)
    doms += [specific] * len(y)
    splits += ["train"] * n_spe + ["test"] * n_test
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    ids = content_ids("mnist1d_domains", (d.encode() + row.tobytes() for d, row in zip(doms, x_all)))
    df = pl.DataFrame(
        {
            "example_id": ids,
            "source": "mnist1d_domains",
            "split": splits,
            "label": y_all,
            "label_orig": y_all,
            "is_noisy": False,
            "x": pl.Series("x", list(x_all)).cast(pl.List(pl.Float32)),
            "domain": doms,
        }
    )
    meta = {
        "kind": "vector",
        "input_dim": int(x_all.shape[1]),
        "num_classes": 10,
        "classes": [str(c) for c in range(10)],
        "domains": sorted(domains),
        "specific": specific,
    }
    return df, meta


# ---------------------------------------------------------------------------------------------- stdlib text domains

TEXT_DOMAINS = ("code", "comments", "docstrings", "tests", "docs")


def _is_session_line(line: str) -> bool:
    s = line.lstrip()
    return s.startswith(">>>") or s.startswith("...")


def _split_sessions(text: str) -> tuple[str, str]:
    """Separate interactive ``>>>`` sessions (prompt lines and the output lines that follow) from the prose."""
    prose, sess = [], []
    in_session = False
    for line in text.splitlines():
        if _is_session_line(line):
            in_session = True
            sess.append(line.strip())
        elif in_session and line.strip():
            sess.append(line.strip())  # output of the previous prompt
        else:
            in_session = False
            prose.append(line)
    return "\n".join(prose), "\n".join(sess)


def _mine_module(src: str) -> dict[str, str]:
    """Split one module's source into code lines, comments, docstrings (prose) and docstring sessions."""
    out = {"code": "", "comments": "", "docstrings": "", "sessions": ""}
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return out
    doc_lines: set[int] = set()
    docs, sess = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                first.value.value, str
            ):
                doc_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
                prose, s = _split_sessions(ast.get_docstring(node) or "")
                docs.append(prose)
                sess.append(s)
    comments, comment_lines = [], set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT and not tok.string.startswith("#!"):
                comments.append(tok.string.lstrip("#").strip())
                comment_lines.add(tok.start[0])
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    code = [
        ln.split("#")[0].rstrip() if i in comment_lines else ln.rstrip()
        for i, ln in enumerate(src.splitlines(), start=1)
        if i not in doc_lines
    ]
    out["code"] = "\n".join(ln for ln in code if ln.strip())
    out["comments"] = "\n".join(c for c in comments if c)
    out["docstrings"] = "\n\n".join(d for d in docs if d.strip())
    out["sessions"] = "\n".join(s for s in sess if s.strip())
    return out


def _clean(text: str) -> str:
    """Keep printable ASCII and newlines (tabs become spaces, anything else '?') so the vocabulary stays small."""
    text = text.replace("\t", "    ")
    return "".join(c if (" " <= c <= "~" or c == "\n") else "?" for c in text)


def _chunks(text: str, length: int, limit: int, rng: random.Random) -> list[str]:
    """Non-overlapping chunks of ``length`` chars; a random subset of ``limit`` when there are more."""
    chunks = [text[i : i + length] for i in range(0, len(text) - length + 1, length)]
    if len(chunks) > limit:
        chunks = [chunks[i] for i in sorted(rng.sample(range(len(chunks)), limit))]
    return chunks


def text_domain_table(source: str, rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """The domain examples table of text chunks: ``rows`` of (domain, split, text), ids from their content (so a
    chunk keeps its id when other chunks change), no labels (a language model's targets are the text itself)."""
    doms, splits, text = (list(col) for col in zip(*rows))
    n = len(rows)
    return pl.DataFrame({
        "example_id": content_ids(source, (f"{d}\0{t}".encode() for d, t in zip(doms, text))),
        "source": source,
        "split": splits,
        "label": pl.Series([0] * n, dtype=pl.Int64),
        "label_orig": pl.Series([0] * n, dtype=pl.Int64),
        "is_noisy": False,
        "text": text,
        "domain": doms,
    })


def stdlib_text_domains(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Character-level text domains mined from the installed Python standard library.

    cfg: ``chunk_len`` (characters per example = block_size + 1), ``per_domain`` (chunks per generic domain),
    ``domains`` (subset of code/comments/docstrings/tests/docs), ``n_specific`` / ``n_specific_test`` (chunks of the
    specific ``sessions`` domain), ``stdlib`` (path; default: this interpreter's), ``max_files``, ``seed``.
    """
    chunk_len = int(cfg.get("chunk_len", 65))
    per_domain_spec = cfg.get("per_domain", 400)
    n_spe = int(cfg.get("n_specific", 40))
    n_test = int(cfg.get("n_specific_test", 200))
    names = list(cfg.get("domains") or TEXT_DOMAINS)
    specific = str(cfg.get("specific", "sessions"))
    seed = int(cfg.get("seed", 0))
    unknown = sorted(set(names) - set(TEXT_DOMAINS))
    if unknown or not names:
        raise ConfigError(f"unknown or missing text domains {unknown or names}", field="dga.data.domains",
                          fix=f"use a non-empty subset of {list(TEXT_DOMAINS)}")
    if chunk_len < 4:
        raise ConfigError("chunk_len must be >= 4", field="dga.data.chunk_len", fix="use e.g. 65")
    root = Path(cfg.get("stdlib") or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError("the Python standard library folder does not exist", file=root,
                        fix="set dga.data.stdlib to the folder that holds os.py")
    sizes = domain_sizes(per_domain_spec, sorted(names), "dga.data.per_domain")
    per_domain = max(sizes.values())
    rng = random.Random(seed)
    # Sorted, then shuffled with the seed: the same files on every run, spread over the whole library.
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "idlelib" not in p.parts)
    rng.shuffle(files)
    max_files = int(cfg.get("max_files", 250))
    need = chunk_len * per_domain * 2  # enough text that chunks are drawn from many files
    texts: dict[str, list[str]] = {n: [] for n in [*TEXT_DOMAINS, "sessions"]}
    mined = dict.fromkeys(texts, 0)
    for path in files[:max_files]:
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts = _mine_module(src)
        is_test = "test" in path.parts or path.name.startswith("test_")
        if is_test:
            parts = {"tests": _split_sessions(src)[0], "sessions": parts["sessions"]}
        for name, text in parts.items():
            if text and mined[name] < need * (3 if name == "sessions" else 1):
                texts[name].append(text)
                mined[name] += len(text)
    import pydoc_data.topics as topics

    for key in sorted(topics.topics):
        prose, sess = _split_sessions(topics.topics[key])
        texts["docs"].append(prose)
        texts["sessions"].append(sess)
    rows: list[tuple[str, str, str]] = []  # (domain, split, text)
    for name in sorted(names):
        chunks = _chunks(_clean("\n\n".join(texts[name])), chunk_len, sizes[name], rng)
        if not chunks:
            raise DataError(f"the text domain '{name}' came out empty", file=root, field="dga.data.domains",
                            fix="raise max_files or drop this domain")
        rows += [(name, "train", c) for c in chunks]
    spe_chunks = _chunks(_clean("\n".join(texts["sessions"])), chunk_len, n_spe + n_test, rng)
    if len(spe_chunks) < n_spe + n_test:
        raise DataError(f"only {len(spe_chunks)} chunks of interactive sessions found, {n_spe + n_test} asked",
                        file=root, field="dga.data.n_specific", fix="lower n_specific/n_specific_test or chunk_len")
    order = list(range(len(spe_chunks)))
    rng.shuffle(order)
    rows += [(specific, "train" if r < n_spe else "test", spe_chunks[i]) for r, i in enumerate(order)]
    df = text_domain_table("stdlib_text", rows)
    text = df.get_column("text").to_list()
    vocab = "".join(sorted(set("".join(text)) | {"?"}))
    meta = {
        "kind": "text",
        "vocab": vocab,
        "vocab_size": len(vocab),
        "block_size": chunk_len - 1,
        "num_classes": len(vocab),
        "domains": sorted(names),
        "specific": specific,
    }
    log.info("stdlib text domains: %s", df.group_by("domain", "split").len().sort("domain").rows())
    return df, meta


def _installed_text(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    from datasel.data.installed_text import installed_text_domains  # imports this module's miner

    return installed_text_domains(cfg)


GENERATORS = {"mnist1d_domains": mnist1d_domains, "stdlib_text": stdlib_text_domains, "installed_text": _installed_text}


def build_domain_examples(cfg: dict[str, Any]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Dispatch on ``cfg['source']`` to one of :data:`GENERATORS`."""
    name = cfg.get("source")
    if name not in GENERATORS:
        raise ConfigError(f"unknown domain data source '{name}'", field="dga.data.source",
                          fix=f"use one of: {sorted(GENERATORS)} (or 'examples' for the pipeline's examples table)")
    return GENERATORS[name](cfg)
