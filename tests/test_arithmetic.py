"""Arithmetic prompts and the answer checker: exact answers, carry counts against a slow reference, disjoint splits,
math-format files and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasel.errors import ConfigError, DataError
from datasel.rl.answers import check_answer, extract_number, reference_number
from datasel.rl.prompts import apply_op, build_prompt_sets, generate_arithmetic, load_math_file, make_problem


def slow_carries(a: int, b: int) -> int:
    """Column additions by string padding: count columns whose sum (with carry in) reaches 10."""
    sa, sb = str(a)[::-1], str(b)[::-1]
    carry = count = 0
    for i in range(max(len(sa), len(sb))):
        s = int(sa[i] if i < len(sa) else 0) + int(sb[i] if i < len(sb) else 0) + carry
        carry = int(s >= 10)
        count += carry
    return count


def slow_borrows(a: int, b: int) -> int:
    sa, sb = str(a)[::-1], str(b)[::-1]
    borrow = count = 0
    for i in range(len(sa)):
        d = int(sa[i]) - int(sb[i] if i < len(sb) else 0) - borrow
        borrow = int(d < 0)
        count += borrow
    return count


@given(st.integers(0, 9999), st.integers(0, 9999))
def test_carries_match_column_arithmetic(a: int, b: int) -> None:
    assert apply_op(a, "+", b) == (a + b, slow_carries(a, b))
    hi, lo = max(a, b), min(a, b)
    assert apply_op(hi, "-", lo) == (hi - lo, slow_borrows(hi, lo))
    # a negative running value subtracting more is an addition of magnitudes
    if a > 0 and b > 0:
        assert apply_op(-a, "-", b) == (-a - b, slow_carries(a, b))


def test_known_problems() -> None:
    p = make_problem([47, 38, 5], ["+", "-"])
    assert p["question"] == "47+38-5=" and p["answer"] == "80"
    assert p["carries"] == 1 + 0 and p["n_ops"] == 2 and p["digits"] == 2  # 7+8 carries; 85-5 borrows nothing
    assert make_problem([3, 9], ["-"])["answer"] == "-6"
    assert make_problem([3, 9], ["-"])["carries"] == 0  # 9-3: no borrow


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_generated_answers_evaluate(seed: int) -> None:
    probs = generate_arithmetic(40, {"digits": [1, 2], "n_ops": [1, 2, 3]}, np.random.default_rng(seed))
    assert len({p["question"] for p in probs}) == 40
    for p in probs:
        assert int(p["answer"]) == eval(p["question"][:-1])  # left-to-right + and - is Python's order
        assert p["n_ops"] in (1, 2, 3) and p["digits"] in (1, 2)


def test_difficulty_controls() -> None:
    rng = np.random.default_rng(0)
    no_carry = generate_arithmetic(100, {"digits": [2], "n_ops": [1], "max_carries": 0, "allow_negative": False}, rng)
    assert all(p["carries"] == 0 and int(p["answer"]) >= 0 for p in no_carry)
    hard = generate_arithmetic(100, {"digits": [2], "n_ops": [2], "min_carries": 2}, rng)
    assert all(p["carries"] >= 2 for p in hard)
    with pytest.raises(ConfigError, match="distinct problems"):
        generate_arithmetic(500, {"digits": [1], "n_ops": [1], "ops": ["+"]}, rng)  # only 100 exist
    with pytest.raises(ConfigError):
        generate_arithmetic(5, {"ops": ["*"]}, rng)


def test_prompt_sets_are_disjoint_and_stable() -> None:
    cfg = {"sizes": {"warmstart": 300, "pool": 100, "heldout": 50}}
    a, b = build_prompt_sets(cfg, 1), build_prompt_sets(cfg, 1)
    assert a.equals(b)
    assert a.group_by("split").len().sort("split")["len"].to_list() == [50, 100, 300]
    assert a["question"].n_unique() == a.height and a["prompt_id"].n_unique() == a.height


@pytest.mark.parametrize(
    "completion, answer, ok",
    [("42", "42", True), ("the answer is 1,234.", "#### 1234", True), ("-7", "-7", True), ("7", "-7", False),
     ("3.50", "\\boxed{3.5}", True), ("12 then 13", "13", True), ("", "1", False), ("abc", "1", False),
     ("Natalia sold 48/2 = 24 clips ... 72", "Natalia sold ...\n#### 72", True)],
)
def test_answer_checker(completion: str, answer: str, ok: bool) -> None:
    assert check_answer(completion, answer) is ok


def test_number_extraction() -> None:
    assert extract_number("no digits") is None
    assert reference_number("x = \\boxed{17}") == 17.0
    assert reference_number("so 5 + 5 = 10\n#### 10") == 10.0


def test_math_file_formats(tmp_path) -> None:
    rows = [{"question": f"What is {i}+{i}?", "answer": f"Double it.\n#### {2 * i}"} for i in range(30)]
    jl = tmp_path / "gsm.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    df = load_math_file(jl)
    assert df.height == 30 and reference_number(df["answer"][3]) == 6.0
    sets = build_prompt_sets({"source": "file", "path": str(jl), "sizes": {"warmstart": 10, "pool": 10, "heldout": 10}})
    assert set(sets["split"]) == {"warmstart", "pool", "heldout"} and sets["source"][0] == "gsm"
    with pytest.raises(DataError, match="column 'problem' missing"):
        load_math_file(jl, question_field="problem")
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nwhat?,no idea\n")
    with pytest.raises(DataError, match="hold no number"):
        load_math_file(bad)
    with pytest.raises(DataError, match="sizes ask for"):
        build_prompt_sets({"source": "file", "path": str(jl), "sizes": {"warmstart": 30, "pool": 10, "heldout": 10}})


def test_hf_saved_dataset(tmp_path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"problem": ["1+1?", "2+2?", "3+3?"], "solution": ["2", "4", "\\boxed{6}"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    from datasel.rl.prompts import load_math_hf

    df = load_math_hf(str(tmp_path / "ds"), question_field="problem", answer_field="solution")
    assert df["question"].to_list() == ["1+1?", "2+2?", "3+3?"]
    with pytest.raises(DataError):
        load_math_hf(str(tmp_path / "missing"))
