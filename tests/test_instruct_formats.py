"""Instruction formats (alpaca, chat messages, ShareGPT, prompt/completion): each row's token ids and loss mask
against references built by hand here, with and without a chat template; unused text columns refused; the report
without a task column; an instruct run's export round-tripping the user's rows.

The references tokenize hand-written strings piece by piece (the layouts as docs/data.md states them),
never through datasel's renderer; the generation-marker case is checked against transformers'
``return_assistant_tokens_mask``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from datasel.cli import main
from datasel.errors import ConfigError, DataError, DataselError
from datasel.export import export_selection
from datasel.instruct.data import build_lm_examples, prepare_examples, render
from datasel.instruct.model import build_tiny_model
from datasel.report.lm import lm_section
from datasel.report.summary import Doc
from datasel.selection.make import make_selection
from datasel.store import write_table
from datasel.tasks.causal_lm import IGNORE, encode

EOS = "<|endoftext|>"
CFG: dict[str, Any] = {"format": "auto", "prompt_column": "prompt", "completion_column": "completion",
                       "messages_column": "messages", "conversations_column": "conversations", "task_column": "task",
                       "ignore_columns": [], "max_length": 512}
# a small chat template in the style of the common ones: role header, content, end-of-turn marker
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
MARKED = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' }}{% if m['role'] == 'assistant' %}"
          "{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
          "{{ m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
ALPACA = {"instruction": "Add the two numbers.", "input": "200 201", "output": "401"}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Add 2 and 3"},
        {"role": "assistant", "content": "5"}]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in CHAT]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = ["Below is an instruction that describes a task. Add the two numbers. 200 201 Response: 401",
             "user: Hi assistant: Hello system: Be brief. Add 2 and 3 What is 1 + 2? Answer: 3"] * 5
    return build_tiny_model(texts, tmp_path_factory.mktemp("lm") / "gpt2",
                            {"vocab_size": 300, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 128,
                             "seed": 0})


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def llama_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has role tokens and a chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t = AutoTokenizer.from_pretrained(model_dir)
    t.add_tokens(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], special_tokens=True)
    t.chat_template = TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(t), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                         bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                                         pad_token_id=t.pad_token_id))
    out = tmp_path_factory.mktemp("lm") / "llama"
    model.save_pretrained(out)
    t.save_pretrained(out)
    return out


@pytest.fixture()
def chat_tok(llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def reference(tok: Any, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels built by hand: each piece tokenized alone, labels on the trained pieces only."""
    ids, labels = [], []
    for text, trained in pieces:
        t = _ids(tok, text)
        ids += t
        labels += t if trained else [IGNORE] * len(t)
    return ids, labels


def encoded(tok: Any, df: pl.DataFrame, **cfg: Any) -> tuple[list[int], list[int], Any]:
    _, rows = render(df, {**CFG, **cfg}, tok, "f.jsonl")
    enc, _, _, _ = encode(tok, [r.parts for r in rows], [r.trained for r in rows], 1024)
    n = int(enc.attention_mask[0].sum())
    return enc.input_ids[0, :n].tolist(), enc.labels[0, :n].tolist(), rows[0]


# ------------------------------------------------------------------------------------------------------ layouts


def test_alpaca_without_template_is_stanford_alpacas_prompt_and_keeps_the_input(tok: Any) -> None:
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\nAdd the two numbers.\n\n### Input:\n200 201\n\n### Response:")
    ids, labels, row = encoded(tok, pl.DataFrame([ALPACA]))
    assert (ids, labels) == reference(tok, [(prompt, False), ("401" + EOS, True)])
    assert "200 201" in row.prompt and row.completion == "401"
    inp = _ids(tok, "\n200 201\n")
    assert any(ids[i:i + len(inp)] == inp for i in range(len(ids)))  # the input's tokens are in the prompt
    # an empty (or null) input adds nothing: the no-input layout
    bare = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nAdd the two numbers.\n\n### Response:")
    for empty in ("", None):
        got = encoded(tok, pl.DataFrame([{**ALPACA, "input": empty}]))[:2]
        assert got == reference(tok, [(bare, False), ("401" + EOS, True)])


def test_chat_formats_without_template_train_every_assistant_turn(tok: Any) -> None:
    want = reference(tok, [("system: Be brief.\nuser: Hi\nassistant: ", False), ("Hello" + EOS, True),
                           ("\nuser: Add 2 and 3\nassistant: ", False), ("5" + EOS, True)])
    ids, labels, row = encoded(tok, pl.DataFrame({"messages": [CHAT]}))
    assert (ids, labels) == want
    assert row.prompt.endswith("user: Add 2 and 3\nassistant: ") and row.completion == "5"
    assert encoded(tok, pl.DataFrame({"conversations": [SHAREGPT]}))[:2] == want
    got = encoded(tok, pl.DataFrame({"prompt": ["What is 1 + 2?\nAnswer: "], "completion": ["3"]}))[:2]
    assert got == reference(tok, [("What is 1 + 2?\nAnswer: ", False), ("3" + EOS, True)])


def test_chat_template_spans_are_each_reply_and_its_end_marker(chat_tok: Any) -> None:
    want = reference(chat_tok, [("<|endoftext|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
                                 False), ("Hello<|end|>\n", True),
                                ("<|user|>\nAdd 2 and 3<|end|>\n<|assistant|>\n", False), ("5<|end|>\n", True)])
    ids, labels, row = encoded(chat_tok, pl.DataFrame({"messages": [CHAT]}))
    assert (ids, labels) == want
    assert row.prompt == chat_tok.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=True)
    assert encoded(chat_tok, pl.DataFrame({"conversations": [SHAREGPT]}))[:2] == want
    # alpaca with a template: one user turn, the instruction, a blank line, the input
    ids, labels, row = encoded(chat_tok, pl.DataFrame([ALPACA]))
    assert (ids, labels) == reference(chat_tok, [
        ("<|endoftext|><|user|>\nAdd the two numbers.\n\n200 201<|end|>\n<|assistant|>\n", False),
        ("401<|end|>\n", True)])
    # prompt/completion stays plain text, as written, with the end token
    got = encoded(chat_tok, pl.DataFrame({"prompt": ["Q: 1 + 2?\nA:"], "completion": [" 3"]}))[:2]
    assert got == reference(chat_tok, [("Q: 1 + 2?\nA:", False), (" 3" + EOS, True)])


def test_generation_markers_match_transformers_assistant_mask(chat_tok: Any) -> None:
    chat_tok.chat_template = MARKED
    ids, labels, _ = encoded(chat_tok, pl.DataFrame({"messages": [CHAT]}))
    hf = chat_tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == list(hf["input_ids"])
    assert [lab != IGNORE for lab in labels] == [bool(m) for m in hf["assistant_masks"]]
    assert sum(hf["assistant_masks"]) > 2  # both replies


def test_a_changed_prompt_token_keeps_the_trained_positions(tok: Any, chat_tok: Any) -> None:
    for t in (tok, chat_tok):
        a = [{**m} for m in CHAT]
        b = [{**m} for m in CHAT]
        b[3]["content"] = "Add 3 and 2"  # prompt tokens change, their number does not
        ia, la, _ = encoded(t, pl.DataFrame({"messages": [a]}))
        ib, lb, _ = encoded(t, pl.DataFrame({"messages": [b]}))
        assert len(ia) == len(ib) and ia != ib
        assert [x != IGNORE for x in la] == [x != IGNORE for x in lb] and la == lb


def test_prompt_ending_in_a_space_keeps_reply_tokens_whole(tok: Any) -> None:
    # "Answer: " + "3": the whole text would merge " 3" into one token that straddles prompt and reply
    assert _ids(tok, "Answer: 3")[:len(_ids(tok, "Answer: "))] != _ids(tok, "Answer: ")
    ids, labels, _ = encoded(tok, pl.DataFrame({"prompt": ["Answer: "], "completion": ["3"]}))
    assert (ids, labels) == reference(tok, [("Answer: ", False), ("3" + EOS, True)])


def test_retokenizing_from_the_last_special_token_changes_no_token(tok: Any, chat_tok: Any) -> None:
    from datasel.tasks.causal_lm import tokenize_parts

    long = CHAT + [t for k in range(6) for t in ({"role": "user", "content": f"Add {k} and 3 "},
                                                  {"role": "assistant", "content": f" {k + 3}"})]
    for t in (tok, chat_tok):  # the transcript's end tokens and the template's markers are special tokens
        _, (row,) = render(pl.DataFrame({"messages": [long]}), CFG, t, "f")
        fast = tokenize_parts(t, row.parts, row.trained)
        assert fast == tokenize_parts(t, row.parts, row.trained, anchors={})  # re-tokenizing every whole run
        assert sum(fast[1]) == sum(len(_ids(t, p)) for p, tr in zip(row.parts, row.trained) if tr)


def test_a_word_start_marker_is_not_added_at_a_reply(chat_tok: Any) -> None:
    """A sentencepiece-style tokenizer (Metaspace, as Llama 2 / Mistral) marks the start of a text with "▁": a
    reply tokenized alone would begin with a marker the whole conversation's tokenization does not have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    t.train_from_iterator(["Hello there", "Hi Hello", "Add 2 and 3 5"] * 5, trainer=trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"],
        show_progress=False))
    sp = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    sp.chat_template = ("{{ bos_token }}{% for m in messages %}"
                        "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert sp.convert_ids_to_tokens(_ids(sp, "Hello<|end|>"))[0] == "▁Hello"  # alone: a marker
    ids, labels, _ = encoded(sp, pl.DataFrame({"messages": [chat]}))
    assert ids == list(sp.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert sp.decode(trained) == "Hello<|end|>" and "▁Hello" not in sp.convert_ids_to_tokens(ids)


def test_the_llama_learns_from_reply_tokens_only(llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datasel.tasks.causal_lm import CausalLMTask, completion_loss

    t = AutoTokenizer.from_pretrained(llama_dir)
    path = tmp_path / "chat.jsonl"
    pl.DataFrame({"messages": [CHAT, CHAT[1:3]], "task": ["a", "b"]}).write_ndjson(path)
    table, report = prepare_examples({**CFG, "pool": str(path), "target": str(path), "test": str(path)}, t,
                                     tmp_path / "out")
    assert report["pool"]["format"] == "messages" and report["pool"]["task_column"]
    enc = CausalLMTask(table, {}, {"max_length": 128}, "data.instruct", t).split("train")
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    logits = model(**enc.inputs).logits.detach().requires_grad_(True)
    completion_loss(logits, enc.labels).backward()
    # the loss reads the logits that predict trained tokens (position i-1 predicts token i) and nothing else
    read = logits.grad.abs().sum(-1) > 0
    assert torch.equal(read[:, :-1], enc.labels[:, 1:] != IGNORE)
    assert (enc.labels != IGNORE).sum().item() == table.filter(pl.col("split") == "train").get_column(
        "completion_tokens").sum()


# ---------------------------------------------------------------------------------------------------- refusals


def test_an_unused_text_column_is_refused_naming_it(tok: Any) -> None:
    alpaca = pl.DataFrame([ALPACA])
    # the user's case: alpaca columns read as prompt/completion would drop `input`
    with pytest.raises(DataError) as exc:
        render(alpaca, {**CFG, "format": "prompt_completion", "prompt_column": "instruction",
                        "completion_column": "output"}, tok, "pool.jsonl")
    msg = str(exc.value)
    assert "['input']" in msg and "data.instruct.ignore_columns" in msg and "format: alpaca" in msg
    # detected, the same mapping gives way to alpaca, which reads the input too
    fmt, (row,) = render(alpaca, {**CFG, "prompt_column": "instruction", "completion_column": "output"}, tok, "f")
    assert fmt == "alpaca" and "200 201" in row.prompt
    with pytest.raises(DataError, match=r"\['text'\].*\n.*ignore_columns: \[text\]"):
        render(alpaca.with_columns(pl.lit("pre-rendered").alias("text")), CFG, tok, "pool.jsonl")
    fmt, rows = render(alpaca.with_columns(pl.lit("x").alias("text")), {**CFG, "ignore_columns": ["text"]}, tok, "f")
    assert fmt == "alpaca" and len(rows) == 1
    # a task column under another name: the fix points at task_column (only when the file has no `task` column)
    with pytest.raises(DataError) as exc:
        render(alpaca.with_columns(pl.lit("add").alias("category")), CFG, tok, "pool.jsonl")
    assert "data.instruct.task_column: category" in str(exc.value)
    with pytest.raises(DataError) as exc:
        render(alpaca.with_columns(pl.lit("add").alias("task"), pl.lit("n").alias("note")), CFG, tok, "pool.jsonl")
    assert "['note']" in str(exc.value) and "task_column" not in str(exc.value)
    # columns without text need no role; the task column is one
    fmt, _ = render(alpaca.with_columns(pl.lit(7).alias("id"), pl.lit("arith").alias("task")), CFG, tok, "f")
    assert fmt == "alpaca"
    with pytest.raises(DataError, match="fit several formats"):
        render(alpaca.with_columns(pl.lit("p").alias("prompt"), pl.lit("c").alias("completion")), CFG, tok, "f")
    with pytest.raises(ConfigError, match="two roles"):
        render(alpaca, {**CFG, "ignore_columns": ["input"]}, tok, "f")
    # several rows: a column with repeated values is offered as the task, one unique per row as the id
    rows = pl.DataFrame([ALPACA] * 3).with_columns(pl.Series("uid", ["a1", "a2", "a3"]),
                                                   pl.Series("category", ["add", "add", "sum"]))
    with pytest.raises(DataError) as exc:
        render(rows, CFG, tok, "pool.jsonl")
    assert "task_column: category" in str(exc.value) and "id_column: uid" in str(exc.value)
    fmt, _ = render(rows, {**CFG, "task_column": "category", "id_column": "uid"}, tok, "f")
    assert fmt == "alpaca"
    with pytest.raises(ConfigError, match="two roles"):
        render(rows, {**CFG, "task_column": "category", "id_column": "category", "ignore_columns": ["uid"]}, tok, "f")


def test_example_ids_come_from_the_id_column_or_the_content(tmp_path: Path, tok: Any) -> None:
    pool = pl.DataFrame({"prompt": ["a", "b", "a"], "completion": ["x", "y", "x"], "uid": ["r1", "r2", "r3"]})
    target = pl.DataFrame({"prompt": ["t"], "completion": ["u"]})
    _, table = _instruct_run(tmp_path / "ids", tok, pool, target, id_column="uid")
    by_split = {s: table.filter(pl.col("split") == s).get_column("example_id").to_list() for s in ("train", "val")}
    assert by_split["train"] == ["pool-r1", "pool-r2", "pool-r3"]
    # a file without the column (the target here) gets content ids, like every file when the key is unset
    _, plain = _instruct_run(tmp_path / "plain", tok, pool.drop("uid"), target)
    assert by_split["val"] == plain.filter(pl.col("split") == "val").get_column("example_id").to_list()
    ids = plain.filter(pl.col("split") == "train").get_column("example_id").to_list()
    # the same row twice: one content hash, told apart by the suffix; reordering the file keeps every row's id
    assert ids[2] == ids[0] + "-1" and ids[1] != ids[0] and all(i.startswith("pool-") for i in ids)
    _, moved = _instruct_run(tmp_path / "moved", tok, pool.drop("uid")[[1, 0, 2]], target)
    assert moved.filter(pl.col("split") == "train").get_column("example_id").to_list() == [ids[1], ids[0], ids[2]]
    for bad, match in ((pool.with_columns(pl.Series("uid", ["r1", "r1", "r3"])), r"1 id\(s\) of column 'uid' occur"),
                       (pool.with_columns(pl.Series("uid", ["r1", None, "r3"])), "'uid' is empty in 1 row"),
                       (pool.drop("uid"), "the pool has no id column 'uid'")):
        with pytest.raises(DataError, match=match):
            _instruct_run(tmp_path / "bad", tok, bad, target, id_column="uid")


def test_bad_turns_are_refused(tok: Any, chat_tok: Any) -> None:
    with pytest.raises(DataError, match="does not end with an assistant turn"):
        render(pl.DataFrame({"messages": [CHAT[:4]]}), CFG, tok, "f")
    with pytest.raises(DataError, match="role 'tool'"):
        render(pl.DataFrame({"messages": [[{"role": "tool", "content": "x"}, *CHAT[1:3]]]}), CFG, tok, "f")
    weighted = [{**t, "weight": 0} for t in SHAREGPT]
    with pytest.raises(DataError, match=r"keys \['weight'\] would be left out"):
        render(pl.DataFrame({"conversations": [weighted]}), CFG, tok, "f")
    with pytest.raises(DataError, match="opens with an assistant turn"):
        render(pl.DataFrame({"messages": [CHAT[2:]]}), CFG, tok, "f")
    # a template that writes earlier replies differently once more turns follow: no exact span, refused
    chat_tok.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}[{{ m['role'] }}]"
                              "{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="row 1: the chat template writes turn 3 differently"):
        render(pl.DataFrame({"messages": [CHAT]}), CFG, chat_tok, "f")
    with pytest.raises(DataError, match="column 'completion' is empty in 1 row"):
        render(pl.DataFrame({"prompt": ["a", "b"], "completion": ["c", None]}), CFG, tok, "f")


# ------------------------------------------------------------------------------------------ report and export


def _instruct_run(tmp: Path, tok: Any, pool: pl.DataFrame, target: pl.DataFrame, **cfg: Any
                  ) -> tuple[Path, pl.DataFrame]:
    """A run's results/ with the examples table of these pool/target rows (as the prepare step writes it)."""
    results = tmp / "results"
    tmp.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, df in (("pool", pool), ("target", target), ("test", target)):
        paths[role] = str(tmp / f"{role}.jsonl")
        df.write_ndjson(paths[role])
    table, meta = build_lm_examples({**CFG, **cfg, **paths}, tok, results / "examples")
    write_table(table, results / "examples" / "examples.parquet", "examples")
    (results / "examples" / "meta.json").write_text(json.dumps(meta))
    return results, table


def _section(results: Path, table: pl.DataFrame, picks: dict[str, list[int]]) -> tuple[pl.DataFrame, str]:
    pool_ids = table.filter(pl.col("split") == "train").sort("source_row").get_column("example_id").to_list()
    sels = []
    for name, rows in picks.items():
        keep = {pool_ids[i] for i in rows}
        sels.append(pl.DataFrame({"example_id": pool_ids, "selection": name, "selected": [i in keep for i in pool_ids],
                                  "weight": 1.0, "position": pl.Series([None] * len(pool_ids), dtype=pl.Int64)}))
    doc = Doc()
    shares = lm_section(doc, table, pl.concat(sels), json.loads((results / "examples" / "meta.json").read_text()))
    return shares, doc.markdown()


def test_report_share_against_the_pool_base_rate(tmp_path: Path, tok: Any) -> None:
    # 10 pool rows, 3 from the target task "arith"; the pick holds 2 of them out of 4 rows
    tasks = ["arith", "rev", "rev", "arith", "sort", "sort", "rev", "arith", "sort", "rev"]
    pool = pl.DataFrame({"prompt": [f"p{i}" for i in range(10)], "completion": [f"c{i}" for i in range(10)],
                         "task": tasks})
    target = pl.DataFrame({"prompt": ["t"], "completion": ["u"], "task": ["arith"]})
    results, table = _instruct_run(tmp_path, tok, pool, target)
    shares, md = _section(results, table, {"less_top_keep40": [0, 3, 4, 5], "full_keep100": list(range(10))})
    by = {r["selection"]: r for r in shares.iter_rows(named=True)}
    assert by["less_top_keep40"]["target_share"] == pytest.approx(0.5)
    assert by["full_keep100"]["target_share"] == pytest.approx(0.3) == by["less_top_keep40"]["base_rate"]
    assert "Target task(s): arith" in md and "30.0% of the pool" in md and "| `less_top_keep40` | 4 | 50.0% |" in md


def test_report_without_a_task_column_says_so(tmp_path: Path, tok: Any) -> None:
    pool = pl.DataFrame({"prompt": [f"p{i}" for i in range(6)], "completion": [f"c{i}" for i in range(6)]})
    results, table = _instruct_run(tmp_path, tok, pool, pool.head(2))
    assert table.get_column("task").null_count() == table.height  # no task made up
    shares, md = _section(results, table, {"less_top_keep50": [0, 1, 2], "random_keep50": [3, 4, 5]})
    assert "no task column (pool and target file)" in md.lower() and "cannot be computed" in md
    assert "Target task(s)" not in md and "%" not in md
    assert shares.get_column("target_share").null_count() == 2 and shares.get_column("base_rate").null_count() == 2


def test_export_of_instruction_data_round_trips_the_users_rows(tmp_path: Path, tok: Any, monkeypatch) -> None:
    pool = pl.DataFrame({"id": [f"ex-{i}" for i in range(8)], "instruction": [f"Do {i}." for i in range(8)],
                         "input": ["", "x", None, "y", "", "z", "w", ""], "output": [str(i) for i in range(8)],
                         "n": list(range(8))})
    results, table = _instruct_run(tmp_path, tok, pool, pool.head(2), ignore_columns=["id"])
    sel = make_selection(table, None, "random", {"policy": "random", "stratify": False}, 0.5, 0)
    write_table(sel, results / "selections" / "random_keep50.parquet", "selections")
    kept = sorted(table.join(sel.filter(pl.col("selected")), on="example_id").get_column("source_row").to_list())
    want = pool[kept]
    monkeypatch.chdir(tmp_path)
    for fmt, read in (("jsonl", pl.read_ndjson), ("parquet", pl.read_parquet), ("csv", pl.read_csv)):
        out = export_selection(results, "random_keep50", fmt, tmp_path / f"out-{fmt}")
        back = read(out / f"random_keep50.{fmt}")
        if fmt == "csv":  # csv holds text without types or nulls: compared as text, a null as an empty field
            back = pl.read_csv(out / "random_keep50.csv", infer_schema=False).fill_null("")
            assert back.equals(want.select(pl.all().cast(pl.String).fill_null("")))
        else:
            assert back.columns == pool.columns and back.equals(want)
        assert json.loads((out / ".datasel-export.json").read_text())["rows"] == 4
    out = export_selection(results, "random_keep50", "parquet", tmp_path / "out-internal", internal=True)
    back = pl.read_parquet(out / "random_keep50.parquet")
    assert back.columns == [*pool.columns, "example_id", "weight", "position"]
    assert back.select(pool.columns).equals(want)
    import datasets

    out = export_selection(results, "random_keep50", "hf", tmp_path / "out-hf")
    assert pl.from_arrow(datasets.load_from_disk(str(out)).data.table).equals(want)
    # the same safety as any export: a folder with the user's files in it is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", "random_keep50", "--results", str(results), "--out", str(tmp_path / "mine"),
                 "--overwrite"]) == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(DataselError, match="refusing to export"):
        export_selection(results, "random_keep50", "jsonl", results / "export" / "x")
    with pytest.raises(DataselError, match="pool rows only"):
        export_selection(results, "random_keep50", "jsonl", tmp_path / "out-splits", splits="train,test")
    # the CLI's own command, as the README runs it from the run folder
    assert main(["export", "random_keep50", "--format", "jsonl", "--out", str(tmp_path / "cli")]) == 0
    assert pl.read_ndjson(tmp_path / "cli" / "random_keep50.jsonl").equals(want)
