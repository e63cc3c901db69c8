"""Load a causal LM and its tokenizer from what :func:`datasel.models.locate.lm_source` resolved: a folder or a GGUF.

A GGUF file (the packaged SmolLM2-135M-Instruct, or any ``.gguf``) is dequantized by ``transformers`` (through the
``gguf`` package), which takes tens of seconds; it is done once per file and kept as a safetensors folder (model and
tokenizer, chat template included) in the cache, keyed by the file's SHA-256, so every later job loads the folder
in a second or two. The cache folder is ``$DATASEL_CACHE/gguf/<sha256>`` (``DATASEL_CACHE`` defaults to
``$XDG_CACHE_HOME/datasel``, else ``~/.cache/datasel``); it is written under a temporary name and renamed when
whole, under a file lock, so two jobs converting the same file at once never see half a folder: the second waits
and then reads the first one's folder.

LoRA targets default per architecture (:data:`DEFAULT_LORA_TARGETS`); a name the model lacks is refused before
anything trains, with the names it has.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasel.errors import ConfigError, DataError
from datasel.models.locate import LM_EXTRA_INSTALL, is_gguf

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
# attention projections LoRA wraps by default (LESS and most LoRA recipes: query and value)
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    **{t: ["q_proj", "v_proj"] for t in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma",
                                         "gemma2", "gemma3_text", "olmo", "olmo2", "smollm3", "granite", "phi")},
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    **{t: ["query", "value"] for t in ("bert", "roberta", "xlm-roberta", "electra", "mpnet")},
    "distilbert": ["q_lin", "v_lin"],
}
LORA_LEAF_TYPES = ("Linear", "Conv1D")
CONVERTED_MARK = "datasel-gguf.json"


def cache_root() -> Path:
    """``$DATASEL_CACHE``, else ``$XDG_CACHE_HOME/datasel``, else ``~/.cache/datasel``."""
    if os.environ.get("DATASEL_CACHE"):
        return Path(os.environ["DATASEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "datasel"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_lm_extra(field: str) -> None:
    """Refuse, in one message naming the pip command, when the packages that read GGUF files are missing."""
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"reading a GGUF model needs the package(s) {', '.join(missing)}, not installed",
                          field=field, fix=f"install the lm extra: {LM_EXTRA_INSTALL}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released by the kernel if the holder dies, so no stale lock remains)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _converted(folder: Path) -> bool:
    return (folder / CONVERTED_MARK).is_file()


def gguf_cache_folder(gguf: str | Path, field: str = "model") -> Path:
    """The safetensors folder of ``gguf``, converted now if the cache does not hold it yet."""
    from datasel.export.folder import fsync_tree
    from datasel.store.atomic import atomic_path, incomplete

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"GGUF file {str(gguf)!r} does not exist", file=gguf, field=field,
                          fix="point the model at an existing .gguf file")
    digest = file_sha256(gguf)
    folder = cache_root() / "gguf" / digest
    if _converted(folder):
        return folder
    require_lm_extra(field)
    with _file_lock(folder.parent / f".{digest}.lock"):
        if _converted(folder):  # another job converted it while this one waited for the lock
            return folder
        if folder.exists():  # unmarked, hence not written by a conversion (those rename whole): replace it
            log.warning("replacing %s: it lacks the %s mark of a finished conversion", folder, CONVERTED_MARK)
            shutil.rmtree(folder)

        def verify(tmp: Path) -> None:
            if not (tmp / "config.json").is_file() or not any(tmp.glob("*.safetensors")):
                raise incomplete(tmp, "the converted folder has no config.json or safetensors weights")

        log.info("dequantizing %s once into %s (later jobs load the folder)", gguf, folder)
        with atomic_path(folder, verify=verify) as tmp:
            tmp.unlink()
            model, tok = _load_gguf(gguf, field)
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / CONVERTED_MARK).write_text(json.dumps({"source": str(gguf), "sha256": digest}, indent=2))
            fsync_tree(tmp)
    return folder


def _load_gguf(gguf: Path, field: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"cannot read the GGUF model {str(gguf)!r}: {str(exc).strip()[:200]}", file=gguf,
                          field=field, fix="use a GGUF of an architecture transformers reads (llama, mistral, "
                                           "qwen2, gpt2, phi3, ...), or a save_pretrained folder") from None
    # The weights are dequantized floats now; the quantizer only marks the model unsaveable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def model_folder(source: str | Path, field: str = "model") -> Path:
    """A loadable folder for ``source``: the folder itself, or a GGUF file's cached conversion."""
    return gguf_cache_folder(source, field) if is_gguf(source) else check_model_folder(source, field)


def check_model_folder(path: str | Path, field: str) -> Path:
    """A local causal-LM folder with a config and a tokenizer, or a clear refusal naming what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"model folder {str(path)!r} does not exist", file=p, field=field,
                          fix="give a local folder saved with save_pretrained, a .gguf file, a packaged model "
                              "(source: smollm2) or a hub name in the local cache; nothing is downloaded")
    if not (p / "config.json").exists():
        raise DataError("the model folder has no config.json", file=p, field=field,
                        fix="save the model with model.save_pretrained(folder)")
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        raise DataError("the model folder has no tokenizer (no tokenizer.json / tokenizer_config.json / vocab)",
                        file=p, field=field, fix="save the tokenizer beside the model: tokenizer.save_pretrained(folder)")
    return p


def resolve_dtype(dtype: str, device: Any, field: str = "model.dtype") -> Any:
    """``auto``: bfloat16 on a GPU that has it (float16 on an older one), float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", field=field, fix=f"use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def load_tokenizer(source: str | Path, field: str = "model") -> Any:
    """The tokenizer of ``source``, its chat template included where the model has one (instruct data renders
    chat rows through it)."""
    from transformers import AutoTokenizer

    folder = model_folder(source, field)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the tokenizer from {str(folder)!r}: {str(exc)[:200]}", file=folder,
                          field=field, fix="save the tokenizer beside the model (tokenizer.save_pretrained)") from None
    return tok


def load_causal_lm(source: str | Path, device: Any = "cpu", dtype: str = "auto",
                   field: str = "model") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a folder or a GGUF file (cached conversion), in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    torch_dtype = resolve_dtype(dtype, device, f"{field}.dtype")
    folder = model_folder(source, field)
    tok = load_tokenizer(folder, field)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load a causal LM from {str(folder)!r}: {str(exc)[:200]}", file=folder,
                          field=field, fix="give a folder saved with save_pretrained (model and tokenizer)") from None
    return model.to(device), tok


def lora_leaf_names(model: Any) -> list[str]:
    """Leaf names of the modules LoRA can wrap (Linear, GPT-2's Conv1D): what ``target_modules`` may name."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if n and type(m).__name__ in LORA_LEAF_TYPES})


def lora_targets(model: Any, requested: list[str] | None, field: str, file: str | Path | None = None) -> list[str]:
    """``requested`` checked against the model, or the architecture's default when it is None.

    A name matches a module by its full dotted name or a dotted suffix (``c_attn``, ``attn.c_attn``), as peft does.
    """
    names = [n for n, _ in model.named_modules()]
    have = lora_leaf_names(model)
    if requested is None:
        mtype = str(getattr(getattr(model, "config", None), "model_type", ""))
        default = DEFAULT_LORA_TARGETS.get(mtype)
        if default is None:  # an architecture not in the table: its attention projections by their usual names
            default = next((c for c in DEFAULT_LORA_TARGETS.values() if set(c) <= set(have)), None)
        if default is None:
            raise ConfigError(f"no default LoRA target modules for model type {mtype!r}", file=file, field=field,
                              fix=f"name them in {field}; this model's Linear modules: {', '.join(have)}")
        requested = default
    missing = [t for t in requested if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"LoRA target module(s) {missing} do not exist in the model", file=file, field=field,
                          fix=f"use some of this model's Linear modules: {', '.join(have)} (or leave "
                              f"{field} unset for the architecture's default)")
    return list(requested)


def add_lora(model: Any, lora: dict[str, Any], field: str, file: str | Path | None = None) -> Any:
    """``model`` with fresh LoRA adapters (a peft model; A is drawn now, so the caller seeds) and only those
    trainable. ``lora``: ``r``, ``alpha``, ``dropout`` (default 0), ``target_modules`` (None: the architecture's
    default, :func:`lora_targets`)."""
    import peft

    targets = lora_targets(model, lora.get("target_modules"), field, file=file)
    for p in model.parameters():
        p.requires_grad_(False)
    lcfg = peft.LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora.get("dropout", 0.0)),
                           target_modules=targets, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    # adapters train in fp32 even on a half-precision base (their moments and updates are tiny numbers)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model
