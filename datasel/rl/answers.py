"""Verifiable rewards: pull the final number out of a completion and compare it with the reference answer.

Reference answers come in the common math formats: a bare number ("42"), GSM8K's rationale ending in "#### 42",
or a LaTeX ``\\boxed{42}``. A completion's answer is, in this order: the number after its last ``####``, inside its
last ``\\boxed{}``, in its last "answer is N" / "answer: N" statement, else the last number of its first paragraph
(text between blank lines) that states a result ("=", "equals", "equal to") or is a bare number, else the last number
of its first paragraph that has one. So working written before the answer is skipped ("47 + 38 = 85" -> 85), and so
is what a small chat model rambles after it ("7 + 5 = 12\n\nThis is because 7 ..." -> 12; "To multiply, ...\n\n
9 × 2 = 18" -> 18). A completion that reasons over several paragraphs must close with one of the markers to be read
right.
"""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# "The answer is 7", "the final answer: 7", "The answer to 352 + 479 is 831", 'The answer is "10".'
_STATED = re.compile(r"answer\b[^.\n]{0,60}?(?:\bis\b|:|=|\bequals\b)\s*[\"'*$(\s]*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_PARAGRAPH = re.compile(r"\n\s*\n")
_RESULT = re.compile(r"=|\bequals?\b|\bequal to\b", re.IGNORECASE)
_BARE = re.compile(r"\s*[-\d.,]+\s*\.?\s*")


def _to_float(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators dropped), or None when there is none."""
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def completion_number(text: str) -> float | None:
    """The number a completion gives as its answer (the order of the module docstring), or None."""
    if "####" in text:
        after = _NUMBER.search(text.split("####")[-1])  # the number the marker introduces, not what follows it
        return _to_float(after.group()) if after else None
    boxed = _BOXED.findall(text)
    if boxed:
        return extract_number(boxed[-1])
    stated = _STATED.findall(text)
    if stated:
        return _to_float(stated[-1])
    parts = [p for p in _PARAGRAPH.split(text) if _NUMBER.search(p)]
    for part in parts:
        if _RESULT.search(part) or _BARE.fullmatch(part):
            return extract_number(part)
    return extract_number(parts[0]) if parts else None


def reference_number(answer: str) -> float | None:
    """The number a reference answer states: after '####' when present, else inside \\boxed{}, else the last number."""
    if "####" in answer:
        return extract_number(answer.split("####")[-1])
    boxed = _BOXED.findall(answer)
    if boxed:
        return extract_number(boxed[-1])
    return extract_number(answer)


def check_answer(completion: str, answer: str, rel_tol: float = 1e-6) -> bool:
    """True when the completion's answer (:func:`completion_number`) equals the reference's (to ``rel_tol``; integers compare exactly)."""
    got = completion_number(completion)
    want = reference_number(answer)
    if got is None or want is None:
        return False
    return math.isclose(got, want, rel_tol=rel_tol, abs_tol=1e-9)


def reward(completion: str, answer: str) -> float:
    """The 0/1 verifiable reward GRPO and the curricula see."""
    return 1.0 if check_answer(completion, answer) else 0.0
