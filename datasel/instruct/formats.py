"""Instruction file formats: which columns a file's format reads, and each row rendered into the text the model sees
with the parts that carry the loss marked.

Four formats, detected from the columns (``data.instruct.format: auto``) or named:

- ``alpaca``: ``instruction``, ``input`` (optional; empty or null adds nothing), ``output``. With a chat template the
  user turn is the instruction, a blank line and the input; without one the prompt is Stanford Alpaca's layout
  (``ALPACA_PROMPT``) and the output follows ``### Response:`` directly, then the end token.
- ``messages``: a list of ``role``/``content`` turns (system, user, assistant); every assistant turn carries the loss.
- ``sharegpt``: ``conversations``, a list of ``from``/``value`` turns (human, gpt, system), mapped to messages.
- ``prompt_completion``: ``prompt_column`` + ``completion_column``, plain text (no template), then the end token.

Every text column of a file is read by the format, is the ``task`` column, or is listed in ``ignore_columns``: a
text column nobody reads is refused, never dropped silently.

Chat turns with a template: the assistant spans come from the template's ``{% generation %}`` blocks when it has
them (what ``return_assistant_tokens_mask`` uses), else from rendering prefixes: the span of assistant turn k runs
from the end of ``template(turns[:k], add_generation_prompt=True)`` to the end of ``template(turns[:k+1])``, and both
must be prefixes of the whole conversation's rendering (a template that rewrites earlier turns is refused). The span
holds what the template writes for the reply: its content and its end-of-turn marker. No end token is added: the
template's marker ends the reply. Without a template, a plain transcript: ``role: content`` lines, each assistant
reply opened by ``assistant: `` and followed by the end token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from datasel.errors import ConfigError, DataError

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion")
ALPACA = ("instruction", "input", "output")
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca, train.py): the response follows without a separator
ALPACA_PROMPT = {
    "input": ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"),
    "no_input": ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Response:"),
}
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Rendered:
    """One row as the model sees it: consecutive text ``parts``, ``trained[i]`` when part i carries the loss;
    ``prompt`` is the text before the last trained part (where generation starts) and ``completion`` the last
    reply as written (the exact-match reference)."""

    parts: tuple[str, ...]
    trained: tuple[bool, ...]
    prompt: str
    completion: str


def _key(name: str) -> str:
    return f"data.instruct.{name}"


def reads(fmt: str, cfg: dict[str, Any]) -> dict[str, str]:
    """The columns format ``fmt`` reads, each with the config key that names it."""
    if fmt == "alpaca":
        return {c: f"{_key('format')} (alpaca reads {c})" for c in ALPACA}
    if fmt == "messages":
        return {cfg["messages_column"]: _key("messages_column")}
    if fmt == "sharegpt":
        return {cfg["conversations_column"]: _key("conversations_column")}
    return {cfg["prompt_column"]: _key("prompt_column"), cfg["completion_column"]: _key("completion_column")}


def _required(fmt: str, cfg: dict[str, Any]) -> list[str]:
    return ["instruction", "output"] if fmt == "alpaca" else list(reads(fmt, cfg))


def detect_format(columns: list[str], cfg: dict[str, Any], where: str) -> str:
    """The format named in ``data.instruct.format``, or the one format whose columns the file has."""
    fmt = cfg.get("format", "auto")
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}", field=_key("format"), fix=f"use auto or one of {FORMATS}")
        missing = [c for c in _required(fmt, cfg) if c not in columns]
        if missing:
            key = reads(fmt, cfg).get(missing[0], _key("format"))
            raise DataError(f"format {fmt} needs column(s) {missing}; the file's columns: {', '.join(columns)}",
                            file=where, field=key.split(" ")[0],
                            fix=f"name the file's column in {key.split(' ')[0]}, or set {_key('format')} to the "
                                "file's format")
        return fmt
    found = [f for f in FORMATS if all(c in columns for c in _required(f, cfg))]
    # a format whose columns another fitting format reads too gives way to it (prompt_column: instruction and
    # completion_column: output on an alpaca file: alpaca, which reads the input as well)
    have = {f: {c for c in reads(f, cfg) if c in columns} for f in found}
    found = [f for f in found if not any(have[f] < have[g] for g in found)]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"the columns fit several formats ({', '.join(found)})", file=where, field=_key("format"),
                        fix=f"set {_key('format')} to the one to train on and list the other's columns in "
                            f"{_key('ignore_columns')}")
    raise DataError(f"no instruction format fits the columns ({', '.join(columns)})", file=where,
                    field=_key("format"),
                    fix="give alpaca columns (instruction, input, output), chat turns in "
                        f"'{cfg['messages_column']}' (role/content) or '{cfg['conversations_column']}' (ShareGPT "
                        f"from/value), or '{cfg['prompt_column']}' + '{cfg['completion_column']}' (names in "
                        f"{_key('prompt_column')} / {_key('completion_column')})")


def _has_text(dtype: pl.DataType) -> bool:
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _has_text(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_has_text(f.dtype) for f in dtype.fields)
    return False


def _role_hint(df: pl.DataFrame, loose: list[str]) -> str:
    """Which key may fit a loose text column: one whose values repeat may name each row's task, one unique per row
    may be its id."""
    plain = [c for c in loose if df.schema[c] in (pl.String, pl.Categorical)]
    counts = {c: df.get_column(c).n_unique() for c in plain}
    hints = []
    ids = [c for c in plain if counts[c] == df.height > 1]
    tasks = sorted((c for c in plain if c not in ids), key=lambda c: counts[c])
    if tasks:
        hints.append(f"a column that names each row's task goes in {_key('task_column')} (e.g. "
                     f"{_key('task_column')}: {tasks[0]})")
    if ids:
        hints.append(f"a column of unique row ids may go in {_key('id_column')} (e.g. {_key('id_column')}: "
                     f"{ids[0]})")
    return "; " + "; ".join(hints) if hints else ""


def check_columns(df: pl.DataFrame, fmt: str, cfg: dict[str, Any], where: str) -> dict[str, str]:
    """Every column's role (the key that reads or ignores it); a text column with none is refused.

    Columns without text (numbers, booleans) need no role: they travel with the row and are exported unchanged.
    """
    roles = {c: k for c, k in reads(fmt, cfg).items() if c in df.columns}
    owners: dict[str, str] = {}
    extra = [(cfg.get(k), _key(k)) for k in ("task_column", "id_column")]
    extra += [(c, _key("ignore_columns")) for c in cfg.get("ignore_columns") or []]
    for col, key in extra:
        if not col:
            continue
        if col in roles or owners.get(col, key) != key:
            raise ConfigError(f"column '{col}' is given two roles ({roles.get(col) or owners[col]} and {key})",
                              field=key, fix="give each column one role")
        owners[col] = key
    roles.update({c: k for c, k in owners.items() if c in df.columns})
    unused = [c for c, t in df.schema.items() if c not in roles and _has_text(t)]
    if unused:
        read = ", ".join(f"'{c}'" for c in reads(fmt, cfg) if c in df.columns)
        others = [f for f in FORMATS if f != fmt and any(c in reads(f, cfg) for c in unused)
                  and all(c in df.columns for c in _required(f, cfg))]
        hint = f"set {_key('format')}: {others[0]} to train on it, or, " if others else ""
        # the file has no column under the task key's name: one of these may be its task, under another name
        loose = [c for c in unused if not any(c in reads(f, cfg) for f in FORMATS)]
        task_hint = "" if cfg.get("task_column") in df.columns else _role_hint(df, loose)
        raise DataError(f"text column(s) {unused} would be left out: format {fmt} reads {read}", file=where,
                        field=_key("ignore_columns"),
                        fix=f"{hint}when the column is not for training (an id, a note), list it in "
                            f"{_key('ignore_columns')}: [{', '.join(unused)}]" + task_hint)
    return roles


def _texts(df: pl.DataFrame, col: str, key: str, where: str, optional: bool = False) -> list[str]:
    """A text column's values; integers are written as they are, nulls refused (or empty where optional)."""
    s = df.get_column(col)
    if s.dtype.is_integer():
        s = s.cast(pl.String)
    elif s.dtype not in (pl.String, pl.Null):
        raise DataError(f"column '{col}' holds {s.dtype}, not text", file=where, field=key,
                        fix="write the column as strings")
    values = s.to_list()
    if not optional:
        nulls = [i for i, v in enumerate(values) if v is None]
        if nulls:
            raise DataError(f"column '{col}' is empty in {len(nulls)} row(s) (first: row {nulls[0] + 1})", file=where,
                            field=key, fix="fill those rows or remove them")
    return ["" if v is None else v for v in values]


def _turns(df: pl.DataFrame, col: str, key: str, where: str, role_key: str, text_key: str,
           roles: dict[str, str], keep_extra: bool) -> list[list[dict[str, Any]]]:
    """Each row's turns as role/content messages; ``keep_extra`` hands other keys on (to a chat template)."""
    convs = []
    for i, turns in enumerate(df.get_column(col).to_list()):
        if not isinstance(turns, list) or not turns:
            raise DataError(f"row {i + 1}: '{col}' is not a list of turns", file=where, field=key,
                            fix=f"give each row a list of {{'{role_key}': ..., '{text_key}': ...}} turns")
        msgs = []
        for t, turn in enumerate(turns):
            turn = {k: v for k, v in (turn or {}).items() if v is not None}
            role, text = turn.pop(role_key, None), turn.pop(text_key, None)
            if role not in roles:
                raise DataError(f"row {i + 1}, turn {t + 1}: role {role!r} is not one of {sorted(roles)}", file=where,
                                field=key, fix=f"use the roles {sorted(roles)}")
            if not isinstance(text, str):
                raise DataError(f"row {i + 1}, turn {t + 1}: '{text_key}' is {type(text).__name__}, not text", file=where,
                                field=key, fix=f"give every turn a text '{text_key}'")
            if turn and not keep_extra:
                raise DataError(f"row {i + 1}, turn {t + 1}: keys {sorted(turn)} would be left out (only "
                                f"'{role_key}' and '{text_key}' are written)", file=where, field=key,
                                fix="remove those keys, or give a tokenizer with a chat template that uses them "
                                    "(messages format)")
            msgs.append({"role": roles[role], "content": text, **turn})
        if next((m["role"] for m in msgs if m["role"] != "system"), None) == "assistant":
            raise DataError(f"row {i + 1}: the conversation opens with an assistant turn (a reply needs a prompt)",
                            file=where, field=key, fix="start every conversation with a user turn")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"row {i + 1}: the conversation does not end with an assistant turn (turns after the last "
                            "reply would teach nothing)", file=where, field=key,
                            fix="end every conversation with the assistant's reply")
        convs.append(msgs)
    return convs


def render_rows(df: pl.DataFrame, cfg: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, list[Rendered]]:
    """The format of the file and every row rendered (``tokenizer`` None: no template, no end token)."""
    fmt = detect_format(df.columns, cfg, where)
    check_columns(df, fmt, cfg, where)
    template = bool(getattr(tokenizer, "chat_template", None))
    eos = tokenizer.eos_token if tokenizer is not None else ""
    if fmt == "prompt_completion":
        pc, cc = cfg["prompt_column"], cfg["completion_column"]
        prompts = _texts(df, pc, _key("prompt_column"), where)
        comps = _texts(df, cc, _key("completion_column"), where)
        return fmt, [_plain(p, c, eos) for p, c in zip(prompts, comps)]
    if fmt == "alpaca":
        ins = _texts(df, "instruction", _key("format"), where)
        out = _texts(df, "output", _key("format"), where)
        inp = _texts(df, "input", _key("format"), where, optional=True) if "input" in df.columns else [""] * df.height
        if not template:
            return fmt, [_plain(alpaca_prompt(a, b), c, eos) for a, b, c in zip(ins, inp, out)]
        convs = [[{"role": "user", "content": a + (f"\n\n{b}" if b else "")}, {"role": "assistant", "content": c}]
                 for a, b, c in zip(ins, inp, out)]
    elif fmt == "messages":
        col = cfg["messages_column"]
        convs = _turns(df, col, _key("messages_column"), where, "role", "content", {r: r for r in CHAT_ROLES},
                       keep_extra=template)
    else:
        col = cfg["conversations_column"]
        convs = _turns(df, col, _key("conversations_column"), where, "from", "value", SHAREGPT_ROLES,
                       keep_extra=False)
    if template:
        return fmt, [_templated(c, tokenizer, where, i) for i, c in enumerate(convs)]
    return fmt, [_transcript(c, eos) for c in convs]


def alpaca_prompt(instruction: str, inp: str) -> str:
    return ALPACA_PROMPT["input" if inp else "no_input"].format(instruction=instruction, input=inp)


def _plain(prompt: str, completion: str, eos: str) -> Rendered:
    return Rendered((prompt, completion + eos), (False, True), prompt, completion)


def _from_spans(text: str, spans: list[tuple[int, int]], last: str) -> Rendered:
    parts, trained, at = [], [], 0
    for s, e in spans:
        parts += [text[at:s], text[s:e]]
        trained += [False, True]
        at = e
    if at < len(text):  # after the last reply (a template's closing text): context that trains nothing
        parts.append(text[at:])
        trained.append(False)
    return Rendered(tuple(parts), tuple(trained), text[:spans[-1][0]], last)


def _transcript(msgs: list[dict[str, Any]], eos: str) -> Rendered:
    text, spans = "", []
    for m in msgs:
        if m["role"] == "assistant":
            text += "assistant: "
            spans.append((len(text), len(text) + len(m["content"]) + len(eos)))
            text += m["content"] + eos + "\n"
        else:
            text += f"{m['role']}: {m['content']}\n"
    return _from_spans(text[:-1], spans, msgs[-1]["content"])


def _templated(msgs: list[dict[str, Any]], tok: Any, where: str, row: int) -> Rendered:
    """Spans of the assistant turns in the template's rendering: its generation blocks, or rendered prefixes."""
    n = sum(m["role"] == "assistant" for m in msgs)
    try:
        if _GENERATION.search(tok.get_chat_template()):
            from transformers.utils.chat_template_utils import render_jinja_template

            texts, indices = render_jinja_template(conversations=[msgs], chat_template=tok.get_chat_template(),
                                                   return_assistant_tokens_mask=True, **tok.special_tokens_map)
            text, spans = texts[0], [tuple(s) for s in indices[0]]
            if len(spans) != n:
                raise DataError(f"row {row + 1}: the chat template marks {len(spans)} generation block(s) for {n} "
                                "assistant turn(s)", file=where, field=_key("format"),
                                fix="wrap each assistant reply in {% generation %}...{% endgeneration %}")
            return _from_spans(text, spans, msgs[-1]["content"])
        text = tok.apply_chat_template(msgs, tokenize=False)
        spans = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = tok.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True)
            upto = tok.apply_chat_template(msgs[:k + 1], tokenize=False)
            if not (upto.startswith(before) and text.startswith(upto)) or (spans and len(before) < spans[-1][1]):
                raise DataError(f"row {row + 1}: the chat template writes turn {k + 1} differently once later turns follow, "
                                "so the assistant replies cannot be located", file=where, field=_key("format"),
                                fix="use a template that marks replies with {% generation %}...{% endgeneration %} "
                                    "(set tokenizer.chat_template and save it with the model)")
            spans.append((len(before), len(upto)))
    except DataError:
        raise
    except Exception as exc:  # the template's own refusal (jinja's raise_exception, an unknown role...)
        raise DataError(f"row {row + 1}: the chat template refused the conversation ({type(exc).__name__}: "
                        f"{str(exc)[:160]})", file=where, field=_key("format"),
                        fix="give turns in the order and roles the model's chat template accepts") from None
    return _from_spans(text, spans, msgs[-1]["content"])
