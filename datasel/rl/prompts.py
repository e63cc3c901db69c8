"""Prompt sets with verifiable answers: an arithmetic generator with controlled difficulty, math-format files and
Hugging Face datasets, all turned into one table split into ``warmstart`` / ``pool`` / ``heldout``.

The three splits are disjoint by question text: the warm start teaches the answer format on problems the RL loop
never sees, the pool is what the curricula choose from, and held-out accuracy is measured on the rest.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datasel.data.ids import content_ids
from datasel.errors import ConfigError, DataError
from datasel.rl.answers import reference_number
from datasel.store import SCHEMAS

log = logging.getLogger(__name__)

SPLITS = ("warmstart", "pool", "heldout")

# declared with the other schemas (datasel/store/tables.py) so the catalog gives it a view
PROMPTS_SCHEMA = SCHEMAS["rl_prompts"]


# ---------------------------------------------------------------- arithmetic
def _digit_steps(a: int, b: int, add: bool) -> int:
    """Carries of a+b, or borrows of a-b (a >= b), column by column in base 10."""
    count, carry = 0, 0
    while a > 0 or b > 0:
        da, db = a % 10, b % 10
        if add:
            carry = 1 if da + db + carry >= 10 else 0
        else:
            carry = 1 if da - db - carry < 0 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


def apply_op(value: int, op: str, operand: int) -> tuple[int, int]:
    """``value op operand`` and the number of carries/borrows a person doing it by hand would make.

    Signed values reduce to an addition or a subtraction of magnitudes (e.g. -3 + 5 is 5 - 3), so carries are counted
    on the magnitudes the written algorithm actually works on.
    """
    if op not in "+-":
        raise ConfigError(f"unsupported operator {op!r}", field="cures.prompts.arithmetic.ops", fix="use '+' and/or '-'")
    sign_b = 1 if op == "+" else -1
    result = value + sign_b * operand
    same_sign = (value >= 0) == (sign_b >= 0) or operand == 0 or value == 0
    a, b = abs(value), operand
    if same_sign:
        steps = _digit_steps(a, b, add=True)
    else:
        steps = _digit_steps(max(a, b), min(a, b), add=False)
    return result, steps


def make_problem(operands: list[int], ops: list[str]) -> dict[str, Any]:
    """One problem from operands and operators, evaluated left to right, with its difficulty descriptors."""
    value, carries = operands[0], 0
    for op, b in zip(ops, operands[1:]):
        value, c = apply_op(value, op, b)
        carries += c
    question = "".join(str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))) + "="
    return {
        "question": question,
        "answer": str(value),
        "digits": max(len(str(x)) for x in operands),
        "n_ops": len(ops),
        "carries": carries,
    }


def generate_arithmetic(n: int, cfg: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` distinct problems; difficulty set by ``digits`` (operand sizes), ``n_ops`` and carries.

    Each problem draws a digit count and an operation count uniformly from the configured lists; operands have
    exactly that many digits with probability 1/2 (else fewer), so every level mixes easy and hard items. Problems
    whose carry count falls outside ``[min_carries, max_carries]`` or that go negative when ``allow_negative`` is
    false are redrawn.
    """
    digits = [int(d) for d in cfg.get("digits", [1, 2])]
    n_ops = [int(k) for k in cfg.get("n_ops", [1, 2])]
    ops = list(cfg.get("ops", ["+", "-"]))
    lo_c, hi_c = int(cfg.get("min_carries", 0)), cfg.get("max_carries")
    allow_negative = bool(cfg.get("allow_negative", True))
    if not digits or min(digits) < 1 or not n_ops or min(n_ops) < 1 or not ops:
        raise ConfigError("digits, n_ops and ops must be non-empty with values >= 1",
                          field="cures.prompts.arithmetic", fix="e.g. digits: [1, 2], n_ops: [1, 2], ops: ['+', '-']")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    tries, max_tries = 0, 50 * n + 1000
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ConfigError(
                f"could only generate {len(out)} distinct problems of the {n} asked for",
                field="cures.prompts.arithmetic",
                fix="allow more digits or operations, relax min/max_carries, or ask for fewer prompts",
            )
        d = int(rng.choice(digits))
        k = int(rng.choice(n_ops))
        hi = 10**d if rng.random() < 0.5 else 10 ** max(1, d - 1)
        lo = 10 ** (d - 1) if hi == 10**d and d > 1 else 0
        operands = [int(x) for x in rng.integers(lo, hi, size=k + 1)]
        chosen_ops = [str(o) for o in rng.choice(ops, size=k)]
        prob = make_problem(operands, chosen_ops)
        if prob["carries"] < lo_c or (hi_c is not None and prob["carries"] > int(hi_c)):
            continue
        if not allow_negative and _goes_negative(operands, chosen_ops):
            continue
        if prob["question"] in seen:
            continue
        seen.add(prob["question"])
        out.append(prob)
    return out


def _goes_negative(operands: list[int], ops: list[str]) -> bool:
    value = operands[0]
    for op, b in zip(ops, operands[1:]):
        value = value + b if op == "+" else value - b
        if value < 0:
            return True
    return False


# ---------------------------------------------------------------- graded arithmetic and word problems
# A level is an operation and an operand size: ``add2`` is a sum of two 2-digit numbers, ``mul1`` a product of two
# 1-digit numbers, ``word`` a one-step word problem with small numbers. An instruct model's zero-shot accuracy falls
# from near 1 (add1) to near 0 (add3, mul2), so a pool mixing levels holds easy, learnable and hopeless prompts.
LEVEL_OPS = {"add": "+", "sub": "-", "mul": "×"}
WORD_LEVEL = "word"
DEFAULT_INSTRUCTION = " Answer with just the number."
DEFAULT_LEVELS = ("add1", "add2", "sub2", "mul1", "add3", "mul2", "word")

# (template, the operation its answer is: a op b)
WORD_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", "+"),
    ("{name} had {a} stickers and gave {b} of them to a friend. How many stickers does {name} have left?", "-"),
    ("There are {a} boxes with {b} pencils in each box. How many pencils are there in total?", "×"),
    ("A baker made {a} cookies and sold {b} of them. How many cookies are left?", "-"),
    ("{name} reads {a} pages every day for {b} days. How many pages does {name} read in all?", "×"),
    ("A bus has {a} passengers. At the next stop {b} more get on. How many passengers are on the bus?", "+"),
)
NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Yuki")


def parse_level(level: str) -> tuple[str, int]:
    """``(op symbol, digits)`` of a level name (``add2`` -> ("+", 2)); ``word`` -> ("word", 0)."""
    if level == WORD_LEVEL:
        return WORD_LEVEL, 0
    m = re.fullmatch(r"(add|sub|mul)([1-9])", str(level))
    if m is None:
        raise ConfigError(f"unknown difficulty level {level!r}", field="cures.prompts.graded.levels",
                          fix="use add<d>, sub<d>, mul<d> (d = operand digits, 1-9) or word, e.g. [add1, add2, mul1, word]")
    return LEVEL_OPS[m.group(1)], int(m.group(2))


def _operand(d: int, rng: np.random.Generator) -> int:
    """A number with exactly ``d`` digits (1 digit: 1-9; a 0 operand is a give-away)."""
    return int(rng.integers(10 ** (d - 1) if d > 1 else 1, 10**d))


def graded_problem(level: str, rng: np.random.Generator) -> dict[str, Any]:
    """One problem of ``level``: question text (no instruction), answer, level, digits."""
    op, d = parse_level(level)
    if op == WORD_LEVEL:
        template, op = WORD_TEMPLATES[int(rng.integers(len(WORD_TEMPLATES)))]
        a, b = int(rng.integers(2, 21)), int(rng.integers(2, 13))
        if op == "-":
            a, b = max(a, b) + int(rng.integers(1, 6)), min(a, b)  # never below zero: a child's word problem
        question = template.format(name=NAMES[int(rng.integers(len(NAMES)))], a=a, b=b)
    else:
        a, b = _operand(d, rng), _operand(d, rng)
        if op == "-" and b > a:
            a, b = b, a
        question = f"What is {a} {op} {b}?"
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return {"question": question, "answer": str(value), "level": str(level), "digits": max(len(str(a)), len(str(b)))}


def generate_graded(n: int, cfg: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` distinct problems cycling through ``levels`` (equal shares, in order), each question followed by
    ``instruction`` (the answer format asked of a chat model)."""
    levels = list(cfg.get("levels", DEFAULT_LEVELS))
    if not levels:
        raise ConfigError("no difficulty levels", field="cures.prompts.graded.levels", fix="e.g. [add1, add2, mul1, word]")
    for lv in levels:
        parse_level(lv)
    instruction = str(cfg.get("instruction", DEFAULT_INSTRUCTION))
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n:
        level = levels[len(out) % len(levels)]
        tries += 1
        if tries > 50 * n + 1000:
            raise ConfigError(f"could only generate {len(out)} distinct problems of the {n} asked for",
                              field="cures.prompts.graded.levels",
                              fix="add levels with more digits (add1 and mul1 hold only 81 problems each) or ask for fewer prompts")
        prob = graded_problem(level, rng)
        prob["question"] += instruction
        if prob["question"] in seen:
            continue
        seen.add(prob["question"])
        out.append(prob)
    return out


# ---------------------------------------------------------------- files and HF datasets
def load_math_file(path: str | Path, question_field: str = "question", answer_field: str = "answer") -> pl.DataFrame:
    """A (question, answer) table from JSONL / JSON / Parquet / CSV, e.g. GSM8K's format ("... #### 42")."""
    path = Path(path)
    if not path.exists():
        raise DataError("prompt file does not exist", file=path, field="cures.prompts.path",
                        fix="point cures.prompts.path at a .jsonl/.json/.parquet/.csv file")
    readers = {".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson, ".json": pl.read_json,
               ".parquet": pl.read_parquet, ".csv": pl.read_csv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported prompt file type '{path.suffix}'", file=path,
                        fix="use one of " + ", ".join(readers))
    df = reader(path)
    return _math_frame(df, question_field, answer_field, str(path))


def load_math_hf(name: str, split: str = "train", config_name: str | None = None,
                 question_field: str = "question", answer_field: str = "answer") -> pl.DataFrame:
    """A (question, answer) table from a saved ``datasets`` folder (load_from_disk) or a cached hub dataset."""
    import datasets

    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as exc:  # datasets raises many types: missing split, no cache, no network
        raise DataError(f"cannot load HF dataset ({type(exc).__name__}: {str(exc)[:200]})", file=name,
                        field="cures.prompts.name",
                        fix="give a folder written by Dataset.save_to_disk or a dataset already in the local cache") from exc
    return _math_frame(pl.from_arrow(ds.data.table), question_field, answer_field, name)


def _math_frame(df: pl.DataFrame, qf: str, af: str, where: str) -> pl.DataFrame:
    for f in (qf, af):
        if f not in df.columns:
            raise DataError(f"column '{f}' missing; columns are {df.columns}", file=where, field=f,
                            fix="set cures.prompts.question_field / answer_field to the right column names")
    out = df.select(pl.col(qf).cast(pl.String).alias("question"), pl.col(af).cast(pl.String).alias("answer"))
    bad = [a for a in out["answer"].to_list() if reference_number(a) is None]
    if bad:
        raise DataError(f"{len(bad)} answers hold no number (e.g. {bad[0][:60]!r})", file=where, field=af,
                        fix="keep only rows whose answer ends in a number (or '#### <number>' / \\boxed{<number>})")
    return out.unique(subset="question", keep="first", maintain_order=True)


# ---------------------------------------------------------------- the prompt table
def build_prompt_sets(cfg: dict[str, Any], seed: int = 0) -> pl.DataFrame:
    """The prompt table (``PROMPTS_SCHEMA``) for ``cures.prompts``: ``source`` is arithmetic, graded, file or hf."""
    sizes = {s: int(cfg.get("sizes", {}).get(s, d)) for s, d in zip(SPLITS, (2000, 500, 300))}
    total = sum(sizes.values())
    rng = np.random.default_rng(seed)
    source = cfg.get("source", "arithmetic")
    if source == "arithmetic":
        rows = generate_arithmetic(total, cfg.get("arithmetic", {}), rng)
        df = pl.DataFrame(rows).with_columns(pl.lit("arithmetic").alias("source"))
    elif source == "graded":
        rows = generate_graded(total, cfg.get("graded", {}), rng)
        df = pl.DataFrame(rows).with_columns(pl.lit("graded").alias("source"))
    elif source in ("file", "hf"):
        qf, af = cfg.get("question_field", "question"), cfg.get("answer_field", "answer")
        if source == "file":
            df = load_math_file(cfg.get("path", ""), qf, af)
            name = Path(cfg["path"]).stem
        else:
            df = load_math_hf(cfg.get("name", ""), cfg.get("split", "train"), cfg.get("config_name"), qf, af)
            name = Path(str(cfg["name"])).name
        if df.height < total:
            raise DataError(f"{df.height} distinct questions, but sizes ask for {total}", file=cfg.get("path") or cfg.get("name"),
                            field="cures.prompts.sizes", fix="lower cures.prompts.sizes.{warmstart,pool,heldout}")
        df = df[rng.permutation(df.height)[:total].tolist()].with_columns(pl.lit(name).alias("source"))
    else:
        raise ConfigError(f"unknown prompt source {source!r}", field="cures.prompts.source",
                          fix="use 'arithmetic', 'graded', 'file' or 'hf'")
    split = [s for s in SPLITS for _ in range(sizes[s])]
    df = df.with_columns(pl.Series("split", split))
    ids = content_ids(df["source"][0], (f"{q}\x00{a}".encode() for q, a in zip(df["question"], df["answer"])))
    df = df.with_columns(pl.Series("prompt_id", ids))
    cols = ["prompt_id", "split", "source", "question", "answer"] + [c for c in ("level", "digits", "n_ops", "carries") if c in df.columns]
    log.info("prompt sets: %s", {s: sizes[s] for s in SPLITS})
    return PROMPTS_SCHEMA.validate(df.select(cols), "cures.prompts")
