"""A character tokenizer for the CPU policy: one id per character, plus padding and end-of-sequence."""

from __future__ import annotations

from collections.abc import Iterable

from datasel.errors import DataError

PAD, EOS = "<pad>", "<eos>"


class CharTokenizer:
    """Ids 0 and 1 are padding and end-of-answer; the rest are the characters seen in the prompt table, sorted."""

    pad_id = 0
    eos_id = 1

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.itos = [PAD, EOS, *self.chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        return cls(c for t in texts for c in t)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as exc:
            raise DataError(f"character {exc.args[0]!r} is not in the policy's vocabulary",
                            field="question", fix="build the tokenizer from every prompt the policy will see") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Characters up to the first end-of-answer; padding is skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.itos[i])
        return "".join(out)

    def state(self) -> dict:
        return {"chars": self.chars}
