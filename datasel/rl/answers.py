"""Verifiable rewards: pull the final number out of a completion and compare it with the reference answer.

Reference answers come in the common math formats: a bare number ("42"), GSM8K's rationale ending in "#### 42",
or a LaTeX ``\\boxed{42}``. Completions are judged by their last number, so a policy that writes working before the
answer is still scored on the answer.
"""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _to_float(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators dropped), or None when there is none."""
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def reference_number(answer: str) -> float | None:
    """The number a reference answer states: after '####' when present, else inside \\boxed{}, else the last number."""
    if "####" in answer:
        return extract_number(answer.split("####")[-1])
    boxed = _BOXED.findall(answer)
    if boxed:
        return extract_number(boxed[-1])
    return extract_number(answer)


def check_answer(completion: str, answer: str, rel_tol: float = 1e-6) -> bool:
    """True when the completion's final number equals the reference's (to ``rel_tol``; integers compare exactly)."""
    got = extract_number(completion)
    want = reference_number(answer)
    if got is None or want is None:
        return False
    return math.isclose(got, want, rel_tol=rel_tol, abs_tol=1e-9)


def reward(completion: str, answer: str) -> float:
    """The 0/1 verifiable reward GRPO and the curricula see."""
    return 1.0 if check_answer(completion, answer) else 0.0
