"""Causal language modelling on prompt/completion pairs: the task kind of the instruction chain, and the one loss
that the instruction fine-tune, LESS's gradient features, the CurES warm start, GRPO's policy objective and DGA's
pretrained LM all compute.

Batching: each row is a sequence of text parts, some of which carry the loss (a reply and its end token). Rows that
hold ``parts``/``trained`` (the instruction chain renders them, :mod:`datasel.instruct.formats`) are used as they
are; rows with ``prompt``/``completion`` only are rendered as a user turn and an assistant reply through the
tokenizer's chat template when it has one, else as the prompt followed by the completion and the end token. Tokens
are right-padded; ``labels`` are the token ids on trained tokens and ``IGNORE`` (-100) on the prompt and the padding.

The loss: :func:`token_logprobs` gives log π of every next token and the mask of trained tokens, ``(B, T-1)``. An
example's loss is the mean negative log-probability over its own trained tokens (:func:`example_nll`, LESS's and
the usual SFT convention), and a batch's loss the mean of its examples' losses (:func:`completion_loss`), so each
example's gradient is that of its own loss whatever batch it sits in. GRPO builds its clipped objective from the
same per-token log-probabilities (:meth:`datasel.rl.policy.Policy.token_logprobs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError, DataError
from datasel.features.layer_grads import mark_per_example_mean
from datasel.tasks.base import Split, Task

IGNORE = -100  # label id that the loss skips (the prompt and the padding); F.cross_entropy's default ignore_index


# -- the loss --------------------------------------------------------------------------------------------------------
def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """log π of each target token and the mask of targets that carry the loss (labels ≠ ``IGNORE``).

    ``labels`` aligned with the inputs (the Hugging Face convention: token t is predicted by the logits at t-1)
    gives ``(B, T-1)``; ``shifted=True`` when ``labels[:, t]`` is already the target of ``logits[:, t]`` (``(B, T)``).
    Ignored positions hold 0.
    """
    if not shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(labels.shape)
    return -nll, labels != IGNORE


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean of each row's values over its masked positions (0 for a row with none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp_min(1)


def example_nll(logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False) -> torch.Tensor:
    """``(B,)``: each example's mean negative log-likelihood over its trained tokens."""
    logp, mask = token_logprobs(logits, labels, shifted)
    return -masked_mean(logp, mask)


@mark_per_example_mean
def completion_loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of :func:`example_nll` (accepts a Hugging Face output or logits).

    A mean of per-example losses, not a mean over all tokens of the batch, so that each example's gradient is the
    gradient of its own loss — what per-example gradient features need; declared as such so the feature store may
    take the batched layer path.
    """
    return example_nll(out.logits if hasattr(out, "logits") else out, labels).mean()


def shifted_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`completion_loss` for ``(x, y)`` rows whose targets are already shifted (DGA's text rows)."""
    return example_nll(out, y, shifted=True).mean()


# -- batching --------------------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Right-padded token rectangle: ``labels`` hold the trained tokens (replies and their end token), ``IGNORE``
    elsewhere."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_anchors(tokenizer: Any) -> dict[int, str]:
    """The special added tokens by id (their text): the tokenizer splits the text at them before anything else,
    so what follows one is tokenized the same whatever came before it."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i): t.content for i, t in added.items() if getattr(t, "special", False)}


def tokenize_parts(tokenizer: Any, parts: Sequence[str], trained: Sequence[bool],
                   anchors: dict[int, str] | None = None) -> tuple[list[int], list[bool]]:
    """Token ids of the joined parts and whether each token carries the loss.

    Each part is appended to the text before it and the whole is tokenized again: when the earlier tokens stay as
    they were, the boundary is a token boundary and the ids are exactly the whole text's tokenization (a
    sentencepiece tokenizer adds no stray word-start marker). When appending a part re-merges the last tokens
    before it (a prompt ending in a space, "Answer: " + "3"), the earlier tokens stay as the prompt alone
    tokenizes, as generation sees them, and the part is tokenized on its own: no token ever straddles a prompt and
    a reply, so the loss covers the reply's tokens exactly.

    The text tokenized again starts at the last special token (``anchors``, e.g. a chat template's turn markers),
    checked to tokenize alone as it did in place: a long conversation costs a few passes over its text, not one
    per turn.
    """
    anchors = special_anchors(tokenizer) if anchors is None else anchors
    ids: list[int] = []
    mask: list[bool] = []
    run_text, run_ids = "", []  # the text tokenized again with each part, and its tokens
    for part, train in zip(parts, trained):
        if not part:
            continue
        whole = _ids(tokenizer, run_text + part)
        if whole[:len(run_ids)] == run_ids:
            new, run_text, run_ids = whole[len(run_ids):], run_text + part, whole
        else:
            new = _ids(tokenizer, part)
            run_text, run_ids = part, new
        ids += new
        mask += [bool(train)] * len(new)
        k = next((k for k in range(len(run_ids) - 1, 0, -1) if run_ids[k] in anchors), 0)
        if k:
            at = run_text.rfind(anchors[run_ids[k]])
            if at > 0 and _ids(tokenizer, run_text[at:]) == run_ids[k:]:
                run_text, run_ids = run_text[at:], run_ids[k:]
    return ids, mask


def encode(tokenizer: Any, parts: list[Sequence[str]], trained: list[Sequence[bool]], max_length: int
           ) -> tuple[Encoded, dict[str, Any], list[int], list[int]]:
    """Tokens of each row's parts, cut at ``max_length`` from the right (as LESS's encoder does); returns the
    rectangle, a truncation report, the rows left with no trained token, and each row's trained-token count
    before the cut.

    Padding is to the longest kept row, on the right: real tokens never attend to it (causal attention), so an
    example's loss and gradient do not depend on which rows share its batch.
    """
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    rows, cut, emptied, full = [], 0, [], []
    anchors = special_anchors(tokenizer)
    for i, (p, t) in enumerate(zip(parts, trained)):
        ids, mask = tokenize_parts(tokenizer, p, t, anchors)
        full.append(sum(mask))
        if len(ids) > max_length:
            cut += 1
            ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            emptied.append(i)
        rows.append((ids, mask))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[r, : len(ids)] = row
        attn[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.where(torch.tensor(mask, dtype=torch.bool), row, IGNORE)
    report = {"rows": len(rows), "truncated": cut, "completion_removed": len(emptied), "max_length": max_length,
              "width": width}
    return Encoded(input_ids, attn, labels), report, emptied, full


def lm_batch(inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, idx: torch.Tensor,
             device: torch.device | str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows ``idx`` of a split's inputs and labels on ``device``, cut to their longest row: with right padding the
    columns after it are padding only, so dropping them changes no token's loss."""
    width = int(inputs["attention_mask"][idx].sum(1).max())
    return {k: v[idx, :width].to(device) for k, v in inputs.items()}, labels[idx, :width].to(device)


def render_pairs(prompts: Sequence[str], completions: Sequence[str], tokenizer: Any, where: str
                 ) -> tuple[list[list[str]], list[list[bool]]]:
    """Prompt/completion pairs as text parts: a user turn and the assistant's reply through the tokenizer's chat
    template when it has one, else the prompt, then the completion and the end token (the loss on the latter)."""
    from datasel.instruct.formats import render_rows

    if getattr(tokenizer, "chat_template", None):
        frame = pl.DataFrame({"messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                                           for p, c in zip(prompts, completions)]})
        cfg = {"format": "messages", "messages_column": "messages"}
    else:
        frame = pl.DataFrame({"prompt": list(prompts), "completion": list(completions)})
        cfg = {"format": "prompt_completion", "prompt_column": "prompt", "completion_column": "completion"}
    _, rendered = render_rows(frame, {**cfg, "ignore_columns": []}, tokenizer, where)
    return [list(r.parts) for r in rendered], [list(r.trained) for r in rendered]


class LMTextEncoder:
    """Plain text rows (every token trained) -> ``(ids[:-1], ids[1:])`` with the LM's tokenizer, every row padded to
    one width (the longest row of the table it was built on) so that batches drawn across domains stack; padded
    targets are ``IGNORE``. DGA's text mixture on a pretrained LM trains on these rows with :func:`shifted_loss`."""

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        self.tok = tokenizer
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.width = max((len(_ids(tokenizer, t)) for t in texts), default=2)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n, w = len(texts), self.width - 1
        x = torch.full((n, w), self.pad, dtype=torch.long)
        y = torch.full((n, w), IGNORE, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = _ids(self.tok, t)
            if len(ids) > self.width:
                raise DataError(f"a text row has {len(ids)} tokens, more than the {self.width} this task was built "
                                "for", field="text", fix="build the task from the table that holds every row")
            if len(ids) < 2:
                raise DataError(f"text row {t!r} has fewer than two tokens: nothing to predict", field="text",
                                fix="drop empty rows or use longer chunks")
            x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[i, : len(ids) - 1] = torch.tensor(ids[1:])
        return x, y


# -- the task --------------------------------------------------------------------------------------------------------
class CausalLMTask(Task):
    """Prompt/completion rows (``parts``/``trained``, or ``prompt``/``completion``) for a causal LM.

    ``model_cfg``: the LM (``source``/``path``/``gguf_file``, :func:`datasel.models.locate.lm_source`), ``dtype``,
    ``lora`` (``{r, alpha, dropout, target_modules}`` or None for full fine-tuning) and ``max_length`` (tokens kept
    per row, cut from the right). ``tokenizer``: the LM's, when the caller has it loaded already.
    """

    kind: ClassVar[str] = "causal_lm"
    call_contract: ClassVar[str] = ("model(input_ids=..., attention_mask=...) returning logits (batch, length, "
                                    "vocab)")

    def __init__(self, examples: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any],
                 where: str = "model", tokenizer: Any = None) -> None:
        self.examples, self.meta, self.model_cfg = examples, meta, dict(model_cfg)
        self.where = where
        # the data's cut (instruction data records it in meta), else the model config's
        self.max_length = int(meta.get("max_length") or self.model_cfg.get("max_length", 512))
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer()
        self._splits: dict[str, Split] = {}

    def _source(self) -> str:
        from datasel.models.locate import lm_source

        return lm_source({k: self.model_cfg[k] for k in ("source", "path", "gguf_file") if self.model_cfg.get(k)},
                         self.where)

    def _load_tokenizer(self) -> Any:
        from datasel.models.causal_lm import load_tokenizer

        return load_tokenizer(self._source(), self.where)

    def parts(self, part: pl.DataFrame) -> tuple[list[list[str]], list[list[bool]]]:
        """The text parts of each row and which of them carry the loss."""
        if {"parts", "trained"} <= set(part.columns):
            return part.get_column("parts").to_list(), part.get_column("trained").to_list()
        if {"prompt", "completion"} <= set(part.columns):
            return render_pairs(part.get_column("prompt").cast(pl.String).to_list(),
                                part.get_column("completion").cast(pl.String).to_list(), self.tokenizer, self.where)
        raise DataError(f"causal-LM examples need parts/trained or prompt/completion columns, got {part.columns}",
                        field="examples", fix="give a prompt and a completion column")

    def rows(self, part: pl.DataFrame) -> Split:
        """``part``'s rows in its order: inputs ``{input_ids, attention_mask}`` and token ``labels``."""
        enc = encode(self.tokenizer, *self.parts(part), self.max_length)[0]
        return Split(enc.inputs(), enc.labels, part.get_column("example_id").to_list())

    def split(self, name: str) -> Split:
        if name not in self._splits and self.examples.filter(pl.col("split") == name).height == 0:
            raise ConfigError(f"split '{name}' has no examples", field=self.where,
                              fix="give every split the chain uses at least one row that survives max_length")
        return super().split(name)

    def per_example_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return example_nll(logits, y)

    @property
    def loss_fn(self) -> Any:
        return completion_loss

    @staticmethod
    def last_token_states(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(batch, hidden): the final layer's hidden state at each row's last real token (prompt and reply) — the
        representation LESS's RDS baseline compares. Rows are right-padded, so causal attention keeps the padding
        out of every real token's state."""
        device = next(model.parameters()).device
        mask = inputs["attention_mask"]
        width = int(mask.sum(1).max())
        # the transformer under the LM head (LoRA layers included): its last state is hidden_states[-1] of the whole
        # model, without the vocabulary-sized logits or every layer's states
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        body = getattr(lm, "base_model", lm)
        out = body(input_ids=inputs["input_ids"][:, :width].to(device), attention_mask=mask[:, :width].to(device))
        last = (mask[:, :width].sum(1) - 1).to(device)
        return out.last_hidden_state[torch.arange(len(last), device=device), last]

    def build_model(self, where: str = "model") -> nn.Module:
        """The LM from the one resolver (:mod:`datasel.models.causal_lm`), LoRA-wrapped when ``lora`` is set."""
        from datasel.models.causal_lm import add_lora, load_causal_lm

        model, _ = load_causal_lm(self._source(), "cpu", str(self.model_cfg.get("dtype", "auto")), where)
        if self.model_cfg.get("lora") is not None:
            model = add_lora(model, self.model_cfg["lora"], f"{where}.lora.target_modules")
        self.check_model(model, where)
        return model

    def check_output(self, out: Any, rows: int, where: str) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != rows:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the model returned {got} on a batch of {rows}; a causal LM returns logits "
                              "(batch, length, vocab)", field=where, fix=f"the model is called as {self.call_contract}")
