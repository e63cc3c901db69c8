"""Where a causal LM named in ``instruct.model.path`` lives on disk: a local folder as given, or a hub name
(``org/model``) resolved to its snapshot in the local Hugging Face cache.

Resolved when the Snakefile is parsed (the folder is an input of the chain's rules, so editing the model reruns
them), hence no torch here. Nothing is downloaded by the pipeline: a hub model is fetched once where the network
allows (``huggingface-cli download org/model``) and read from the cache after that.
"""

from __future__ import annotations

from pathlib import Path

from datasel.errors import ConfigError


def looks_like_hub_name(path: str) -> bool:
    """``gpt2`` or ``org/model``: not absolute, not ``./``/``~`` relative, at most one slash."""
    return not (Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1 or not path)


def resolve_model_dir(path: str, field: str = "instruct.model.path", cache_dir: str | Path | None = None) -> str:
    """``path`` itself when it is a folder (or not a hub name: the folder checks then name what is wrong), else the
    cached snapshot folder of the hub model ``path``; a hub name missing from the cache is refused here."""
    if Path(path).expanduser().is_dir() or not looks_like_hub_name(path):
        return str(Path(path).expanduser())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id=path, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(
            f"{path!r} is neither a local folder nor a hub model in the local Hugging Face cache "
            f"({type(exc).__name__})", field=field,
            fix=f"give a folder saved with save_pretrained, or fetch the model once where the network allows "
                f"(huggingface-cli download {path}; HF_HUB_CACHE picks the cache); the pipeline downloads nothing",
        ) from None
