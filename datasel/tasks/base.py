"""The task seam: one object per data kind that owns batching, model building and the per-example loss.

Proxy training, every checkpoint scorer, the feature store and the training rules only talk to a :class:`Task`:

- ``split(name)`` → :class:`Split` — the inputs of one split (a tensor, or a mapping of tensors with a shared
  leading batch dimension), labels and ids, in ``example_id`` order;
- ``build_model(where)`` → the configured ``nn.Module``, checked on one batch (it must return logits ``(B, C)``);
- ``per_example_loss(logits, y)`` → ``(B,)`` (cross-entropy for classification), and ``loss_fn`` its mean, the form
  the per-sample gradient code differentiates.

Causal language modelling (``causal_lm``: prompt/completion pairs, token labels, the per-example completion loss)
is one such kind, :mod:`datasel.tasks.causal_lm`. A new data kind is one module in this package that subclasses :class:`Task` and is named in :func:`make_task`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from datasel.errors import ConfigError

Inputs = torch.Tensor | Mapping[str, torch.Tensor]


def batch_len(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def take(inputs: Inputs, idx: torch.Tensor | slice) -> Inputs:
    """Rows ``idx`` of a tensor or of every tensor of a mapping."""
    if isinstance(inputs, Mapping):
        return {k: v[idx] for k, v in inputs.items()}
    return inputs[idx]


def chunks(inputs: Inputs, size: int) -> list[Inputs]:
    n = batch_len(inputs)
    return [take(inputs, slice(s, s + size)) for s in range(0, n, size)]


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Logits of a batch: ``model(x)`` for a tensor, ``model(**x)`` for a mapping (the Hugging Face convention)."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


def last_linear_name(model: nn.Module) -> str:
    """The module name of the last registered ``nn.Linear``: the classification head by the model contract (and
    the ``last_layer`` parameter set). ``""`` when the model has none."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else ""


@torch.no_grad()
def penultimate(model: nn.Module, inputs: Inputs, chunk_size: int = 1024) -> torch.Tensor:
    """Penultimate activations ``(N, H)``: the input of the classification head, for any model and data kind.

    A model's own ``features()`` (the builtin MLP/CNN) is used when it has one; otherwise a forward pre-hook on the
    last ``nn.Linear`` reads its input (a Hugging Face classifier's pooled ``[CLS]`` vector), so a scorer needs no
    model-specific code.
    """
    if hasattr(model, "features") and callable(model.features) and not isinstance(inputs, Mapping):
        return torch.cat([model.features(c) for c in chunks(inputs, chunk_size)])
    name = last_linear_name(model)
    if not name:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head whose input could be read",
                          field="model", fix="define the classification head as the last nn.Linear of the model")
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        for c in chunks(inputs, chunk_size):
            forward(model, c)
    finally:
        hook.remove()
    # the head may be applied per token (a (B, L, H) input): the first position is the sequence's summary
    return torch.cat([t[:, 0] if t.dim() == 3 else t.flatten(1) for t in seen])


def per_example_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


@dataclass
class Split:
    inputs: Inputs
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(take(self.inputs, idx), self.labels[idx], [self.ids[i] for i in idx.tolist()])


class Task:
    """Base class of a data kind. Subclasses set ``kind`` and implement :meth:`_load`."""

    kind: ClassVar[str] = ""

    def __init__(self, examples: pl.DataFrame, meta: dict[str, Any], model_cfg: dict[str, Any]) -> None:
        self.examples = examples
        self.meta = meta
        self.model_cfg = dict(model_cfg)
        self.num_classes = int(meta["num_classes"])
        self._splits: dict[str, Split] = {}

    # -- data ------------------------------------------------------------------------------------------------------
    def _load(self, part: pl.DataFrame) -> Inputs:
        """The model inputs of the rows of ``part``, in its order."""
        raise NotImplementedError

    def rows(self, part: pl.DataFrame) -> Split:
        """Any rows of the examples table (a domain, a role), in ``part``'s order, loaded as the splits are
        (vector rows standardized with the training split's statistics)."""
        labels = torch.tensor(part.get_column("label").to_list(), dtype=torch.long)
        return Split(self._load(part), labels, part.get_column("example_id").to_list())

    def split(self, name: str) -> Split:
        """One split, in ``example_id`` order, loaded once per task."""
        if name not in self._splits:
            self._splits[name] = self.rows(self.examples.filter(pl.col("split") == name).sort("example_id"))
        return self._splits[name]

    # -- loss ------------------------------------------------------------------------------------------------------
    def per_example_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_example_cross_entropy(logits, y)

    @property
    def loss_fn(self) -> Any:
        """The mean loss over a batch, in the form per-sample gradient code differentiates (accepts HF outputs)."""
        from datasel.features.compute import cross_entropy

        return cross_entropy

    # -- model -----------------------------------------------------------------------------------------------------
    def build_model(self, where: str = "model") -> nn.Module:
        """Build the configured model and check its contract on two training examples."""
        from datasel.models import build_model

        model = build_model(self.model_cfg, self.meta, where=where)
        self.check_model(model, where)
        return model

    def check_model(self, model: nn.Module, where: str) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the model is a {type(model).__name__}, not a torch.nn.Module", field=where,
                              fix="return an nn.Module from the builder")
        train = self.split("train")
        probe = take(train.inputs, slice(0, min(2, len(train))))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = forward(model, to_device(probe, _device_of(model)))
        except Exception as exc:
            raise ConfigError(f"the model fails on a batch of this task's inputs ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", field=where,
                              fix=f"the model is called as {self.call_contract}") from None
        finally:
            model.train(was_training)
        self.check_output(out, batch_len(probe), where)

    def check_output(self, out: Any, rows: int, where: str) -> None:
        """Refuse model outputs the loss cannot take (here: class logits)."""
        want = (rows, self.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the model returned {got} on a batch of {want[0]}; the loss needs logits of shape "
                              f"(batch, num_classes) = {want}", field=where,
                              fix="return one logit per class (meta['num_classes']) for each example")

    call_contract: ClassVar[str] = "model(x)"


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
