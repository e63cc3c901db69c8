"""A hub name in ``instruct.model.path`` resolves to its snapshot in the local Hugging Face cache (nothing is
downloaded); a name missing from the cache is refused naming the field and how to fetch it."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasel.errors import ConfigError
from datasel.instruct.hub import looks_like_hub_name, resolve_model_dir


def _cache_with(tmp_path: Path, repo: str, commit: str = "0" * 40) -> tuple[Path, Path]:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/...}."""
    cache = tmp_path / "hub"
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "tokenizer.json").write_text("{}")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return cache, snap


def test_a_cached_hub_name_becomes_its_snapshot_folder(tmp_path):
    cache, snap = _cache_with(tmp_path, "acme/tiny-lm")
    assert Path(resolve_model_dir("acme/tiny-lm", cache_dir=cache)) == snap


def test_a_local_folder_is_kept_and_paths_are_not_taken_for_hub_names(tmp_path):
    folder = tmp_path / "my-lm"
    folder.mkdir()
    assert resolve_model_dir(str(folder)) == str(folder)
    assert not looks_like_hub_name("./models/lm") and not looks_like_hub_name("/abs/lm")
    assert not looks_like_hub_name("a/b/c") and looks_like_hub_name("gpt2") and looks_like_hub_name("org/lm")
    # a missing path that is not a hub name is left for the folder checks, which name what is wrong
    assert resolve_model_dir("./no/such/folder") == "no/such/folder"


def test_an_uncached_hub_name_is_refused_with_the_field_and_the_fetch_command(tmp_path):
    cache, _ = _cache_with(tmp_path, "acme/tiny-lm")
    with pytest.raises(ConfigError) as err:
        resolve_model_dir("acme/other-lm", field="instruct.model.path", cache_dir=cache)
    msg = str(err.value)
    assert "instruct.model.path" in msg and "huggingface-cli download acme/other-lm" in msg
    assert "neither a local folder nor a hub model" in msg
