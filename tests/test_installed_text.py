"""Token-chunked text domains from installed material (datasel.data.installed_text), on a small fake site-packages
and man tree with a tiny byte-level BPE tokenizer, and the SmolLM2 DGA experiment configs planned by Snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from installed_tree import installed_tree
from lm_models import byte_bpe_tokenizer

from datasel.data.domains import build_domain_examples
from datasel.data.installed_text import installed_text_domains, roff_text
from datasel.errors import ConfigError, DataError
from datasel.store.tables import SCHEMAS
from datasel.workflow_support import dga_data_params

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def tok():
    return byte_bpe_tokenizer()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tok):
    return {"roots": installed_tree(tmp_path_factory.mktemp("installed")), "tokenizer": tok, "chunk_tokens": 12,
            "per_domain": 6, "n_specific": 4, "n_specific_test": 6, "per_file": 2, "exclude": ["man1/gen_*"],
            "domains": ["code", "docstrings", "licenses", "metadata", "reference"], "specific": "manpages"}


@pytest.fixture(scope="module")
def built(cfg):
    return installed_text_domains(cfg)


def test_domains_are_token_sized_and_deterministic(built, cfg, tok):
    df, meta = built
    SCHEMAS["examples"].validate(df, "installed_text")
    sizes = dict(df.group_by("domain", "split").len().select(pl.concat_str("domain", "split"), "len").iter_rows())
    assert sizes == {"codetrain": 6, "docstringstrain": 6, "licensestrain": 6, "metadatatrain": 6,
                     "referencetrain": 6, "manpagestrain": 4, "manpagestest": 6}
    # every row is exactly chunk_tokens of the LM's tokens (windows that do not round-trip are skipped)
    assert {len(tok(t, add_special_tokens=False)["input_ids"]) for t in df["text"]} == {12}
    assert meta["block_size"] == 11 and meta["specific"] == "manpages"
    # so the LM's row encoder stacks them with no padding: every target is a real next token
    from datasel.tasks.causal_lm import LMTextEncoder

    x, y = LMTextEncoder(tok, df["text"].to_list()).encode(df["text"].to_list())
    assert x.shape == (df.height, 11) and (y != -100).all()
    again, meta2 = installed_text_domains(dict(cfg))
    assert again.equals(df) and meta2 == meta
    other, _ = installed_text_domains({**cfg, "seed": 1})
    assert not other.equals(df)  # the seed picks the files
    # a larger specific set keeps the same held-out chunks and contains the smaller one
    big, _ = installed_text_domains({**cfg, "n_specific": 8})
    spe = {s: set(df.filter((pl.col("domain") == "manpages") & (pl.col("split") == s))["text"])
           for s in ("train", "test")}
    spe_big = {s: set(big.filter((pl.col("domain") == "manpages") & (pl.col("split") == s))["text"])
               for s in ("train", "test")}
    assert spe_big["test"] == spe["test"] and spe["train"] < spe_big["train"] and len(spe_big["train"]) == 8


def test_domains_hold_what_their_source_holds(built):
    df, meta = built
    text = {d: "".join(df.filter(pl.col("domain") == d)["text"]) for d in set(df["domain"])}
    assert " = x * " in text["code"] and " = x * " not in text["docstrings"]
    assert "Metadata-Version" not in text["metadata"]  # the header block is not the description
    assert "\\f" not in text["manpages"] and ".SH" not in text["manpages"]
    # each domain records the files its chunks came from, relative to the source's root
    assert all(f.endswith("mod.py") for f in meta["files"]["code"]["train"])
    assert all(f.endswith("/LICENSE") for f in meta["files"]["licenses"]["train"])
    # the reference is read from the chosen stdlib folder, not from the running interpreter's
    assert {f.split(":")[1] for f in meta["files"]["reference"]["train"]} <= {f"topic{i}" for i in range(6)}


def test_specific_rows_do_not_leak(built):
    df, meta = built
    spe = df.filter(pl.col("domain") == "manpages")
    files = meta["files"]["manpages"]
    # train and test chunks from different pages; the excluded generated page is nowhere
    assert set(files["train"]).isdisjoint(files["test"]) and files["train"] and files["test"]
    assert not any("gen_x" in f for f in files["train"] + files["test"])
    assert set(spe["text"]).isdisjoint(df.filter(pl.col("domain") != "manpages")["text"])
    assert df["text"].n_unique() == df.height
    # the license text two packages share counts once: every license chunk is unique and from <= 1 of the copies
    lic = meta["files"]["licenses"]["train"]
    assert not {"pkg0-1.0.dist-info/LICENSE", "pkg1-1.1.dist-info/LICENSE"} <= set(lic)


def test_roff_text_known_value():
    src = ('.\\" a comment\n.TH LS 1\n.SH NAME\nls \\- list \\fBdirectory\\fR contents\n.PP\n'
           '.BR -a ", " --all\ndo not ignore entries starting with \\(aq.\\(aq\n')
    assert roff_text(src) == "LS 1\nNAME\nls - list directory contents\n\n-a, --all\n" \
                             "do not ignore entries starting with '.'"


def test_bad_input_is_refused(cfg, tmp_path):
    with pytest.raises(ConfigError) as exc:
        installed_text_domains({**cfg, "specific": "code"})
    assert exc.value.field == "dga.data.specific"
    with pytest.raises(ConfigError, match="unknown"):
        installed_text_domains({**cfg, "domains": ["poetry"]})
    with pytest.raises(ConfigError) as exc:
        installed_text_domains({**cfg, "tokenizer": None})
    assert exc.value.field == "dga.data.tokenizer"
    with pytest.raises(DataError) as exc:
        installed_text_domains({**cfg, "roots": {**cfg["roots"], "man": str(tmp_path / "none")}})
    assert exc.value.field == "dga.data.roots.man"
    with pytest.raises(DataError) as exc:
        installed_text_domains({**cfg, "n_specific_test": 500})
    assert exc.value.field == "dga.data.n_specific"
    # through the DGA data dispatcher as well
    with pytest.raises(ConfigError):
        build_domain_examples({"source": "installed_text", **cfg, "specific": "code"})


def test_rule_hands_the_models_tokenizer_to_the_data_step():
    dga = {"data": {"source": "installed_text"}, "task": {},
           "model": {"name": "causal_lm", "source": "smollm2", "lora": {"r": 8}}}
    assert dga_data_params(dga) == {"source": "installed_text", "tokenizer": {"source": "smollm2"}}
    dga["data"]["tokenizer"] = {"path": "/m"}
    assert dga_data_params(dga)["tokenizer"] == {"path": "/m"}
    assert "tokenizer" not in dga_data_params({"data": {"source": "stdlib_text"}, "task": {},
                                               "model": {"name": "tiny_gpt"}})


def _plan(tmp: Path, configfile: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATASEL_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp),
                           "--cores", "2", "-n", "--quiet", "rules", "--configfile", configfile], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["dga_text.yaml", "dga_text_large.yaml"])
def test_smollm2_experiment_plans_without_a_model(tmp_path, name):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    proc = _plan(tmp_path, f"config/experiments/{name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("dga_"))
    # 4 strategies x 2 seeds on one domain table; the per-example alignment is off on this model
    assert jobs == {"dga_data": "1", "dga_train": "8", "dga_plots": "1"}, proc.stdout


def test_token_chunks_for_a_character_model_are_refused_at_plan_time(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    text = (tmp_path / "config" / "experiments" / "dga_text.yaml").read_text()
    bad = tmp_path / "config" / "experiments" / "bad.yaml"
    bad.write_text(text.replace("model: {name: causal_lm, source: smollm2, lora: {r: 8, alpha: 16}}",
                                "model: {name: tiny_gpt, d_model: 16, n_layer: 1, n_head: 2}"))
    proc = _plan(tmp_path, "config/experiments/bad.yaml")
    assert proc.returncode != 0 and "dga.model.name" in proc.stderr + proc.stdout
