"""One policy interface over a char-level TinyGPT (CPU) and any local Hugging Face causal LM (GPU users).

A rollout batch is a rectangle of token ids: the prompt left-padded to a common width, then the completion,
right-padded after its end token. ``attn`` marks real tokens, ``comp`` the completion tokens the policy chose
(including the end token), which are exactly the tokens log π(y|x) sums over.

The char policy pads every prompt to the same width (the longest in the prompt table) with a pad token it is also
trained on, so learned positions mean the same thing at warm start, in rollouts and in evaluation.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from datasel.errors import ConfigError
from datasel.models.gpt import TinyGPT
from datasel.rl.tokenizer import CharTokenizer
from datasel.tasks import causal_lm as lm

log = logging.getLogger(__name__)


def completion_labels(seqs: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    """The rollout rectangle as causal-LM labels: its tokens on the completion, ``IGNORE`` elsewhere."""
    return seqs.masked_fill(~comp.bool(), lm.IGNORE)


@dataclass
class Rollouts:
    """Token rectangle (R, L) with real-token and completion masks, and the decoded completions."""

    seqs: torch.Tensor
    attn: torch.Tensor
    comp: torch.Tensor
    texts: list[str]


class Policy(ABC):
    """What GRPO, the warm start and CurES need from a language model."""

    module: nn.Module
    device: torch.device
    max_new_tokens: int

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids (B, P) and their attention mask."""

    @abstractmethod
    def forward_parts(self, seqs: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, token-embedding output, input of a head tied to the embedding or None), all differentiable."""

    @abstractmethod
    def decode(self, ids: torch.Tensor) -> str:
        """Completion text of one row of generated ids (stops at the end token)."""

    @abstractmethod
    def encode_completion(self, text: str) -> list[int]:
        """Token ids of a target completion, without the end token."""

    @property
    @abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abstractmethod
    def pad_id(self) -> int: ...

    def logits(self, seqs: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(seqs, attn)[0]

    def teacher_batch(self, prompts: list[str], targets: list[str]) -> Rollouts:
        """Prompts followed by their reference completions and the end token, in the rollout layout."""
        ids, attn = self.encode_prompts(prompts)
        comps = [self.encode_completion(t)[: self.max_new_tokens - 1] + [self.eos_id] for t in targets]
        width = max(len(c) for c in comps)
        tail = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        for i, c in enumerate(comps):
            tail[i, : len(c)] = torch.tensor(c)
        seqs = torch.cat([ids, tail], dim=1)
        comp = torch.zeros_like(seqs, dtype=torch.bool)
        comp[:, ids.shape[1]:] = torch.arange(width)[None, :] < torch.tensor([len(c) for c in comps])[:, None]
        return Rollouts(seqs.to(self.device), torch.cat([attn, comp[:, ids.shape[1]:].long()], 1).to(self.device),
                        comp.to(self.device), list(targets))

    def token_logprobs(self, seqs: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """(R, L-1): log π of token t+1 given tokens ≤ t (the causal-LM task's :func:`~datasel.tasks.causal_lm.
        token_logprobs`, GRPO's input); mask with ``comp[:, 1:]``."""
        return lm.token_logprobs(self.logits(seqs, attn), seqs)[0]

    def completion_nll(self, ro: Rollouts) -> torch.Tensor:
        """(R,): each rollout's mean negative log-likelihood over its completion tokens (the causal-LM task's
        per-example loss; the warm start's)."""
        return lm.example_nll(self.logits(ro.seqs, ro.attn), completion_labels(ro.seqs, ro.comp))

    @torch.no_grad()
    def sample(self, prompts: list[str], temperature: float = 1.0, greedy: bool = False,
               generator: torch.Generator | None = None) -> Rollouts:
        """One completion per prompt (repeat a prompt to get a group), by temperature sampling or greedily.

        Sampled tokens come from ``torch.multinomial`` on the CPU with ``generator``, so a seeded generator gives
        the same rollouts whatever the device. Each step's next-token logits come from ``_next_logits``: the char
        model re-runs the full prefix (a fixed rectangle keeps its learned positions aligned), the HF policy feeds
        only the new token against its KV cache.
        """
        was_training = self.module.training
        self.module.eval()
        ids, attn = self.encode_prompts(prompts)
        ids, attn = ids.to(self.device), attn.to(self.device)
        b = ids.shape[0]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        comp_cols = []
        state: Any = None
        for _ in range(self.max_new_tokens):
            logits, state = self._next_logits(ids, attn, state)
            logits = logits.float()
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(self.device)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            comp_cols.append(~done)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            attn = torch.cat([attn, (~done).long()[:, None]], dim=1)
            done = done | (nxt == self.eos_id)
            if bool(done.all()):
                break
        p = ids.shape[1] - len(comp_cols)
        comp = torch.zeros_like(ids, dtype=torch.bool)
        comp[:, p:] = torch.stack(comp_cols, dim=1)
        texts = [self.decode(row) for row in ids[:, p:].cpu()]
        self.module.train(was_training)
        return Rollouts(ids, attn, comp, texts)

    def _next_logits(self, ids: torch.Tensor, attn: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """(B, V) logits of the token after ``ids``, and the state the next call receives (None at the first)."""
        return self.logits(ids, attn)[:, -1], None

    def embedding_grad_norms(self, seqs: torch.Tensor, attn: torch.Tensor, comp: torch.Tensor,
                             chunk_size: int = 256) -> torch.Tensor:
        """‖∇_E log π(y|x)‖ per rollout, E the token-embedding matrix, from one batched backward pass per chunk.

        Rollouts do not interact in the forward pass, so the gradient of the summed log-likelihood with respect to
        each rollout's own activations is that rollout's gradient. E enters twice: through the lookup (row idx_t
        receives dx_t) and, when tied, through the output head (∑_s g_s h_sᵀ with g the logit gradient, h the head
        input). The Frobenius norm of their sum is expanded into (T×T) Gram matrices, so no (R, V, d) tensor is
        ever built — the trick that keeps this affordable for a 150k-token HF vocabulary.
        """
        out = []
        for s in range(0, seqs.shape[0], chunk_size):
            out.append(self._emb_norms_chunk(seqs[s:s + chunk_size], attn[s:s + chunk_size], comp[s:s + chunk_size]))
        return torch.cat(out) if out else torch.zeros(0)

    def _emb_norms_chunk(self, seqs: torch.Tensor, attn: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        seqs, attn, comp = seqs.to(self.device), attn.to(self.device), comp.to(self.device)
        with torch.enable_grad():
            logits, x0, h = self.forward_parts(seqs, attn)
            logp, mask = lm.token_logprobs(logits, completion_labels(seqs, comp))
            total = (logp * mask).sum()
            wrt = [x0, logits] + ([h] if h is not None else [])
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
        dx = grads[0].float() if grads[0] is not None else torch.zeros_like(x0, dtype=torch.float32)
        # ‖Σ_t e_{idx_t} dx_tᵀ‖² = Σ_{t,t'} [idx_t = idx_t'] dx_t·dx_t'
        same = (seqs[:, :, None] == seqs[:, None, :]).float()
        sq = (same * (dx @ dx.transpose(1, 2))).sum(dim=(1, 2))
        if h is not None:
            g = grads[1].float()
            hh = h.detach().float()
            sq = sq + ((g @ g.transpose(1, 2)) * (hh @ hh.transpose(1, 2))).sum(dim=(1, 2))
            # cross term 2⟨A, B⟩ = 2 Σ_t Σ_s g_s[idx_t] (dx_t·h_s)
            g_at_idx = g.gather(-1, seqs[:, None, :].expand(-1, g.shape[1], -1))  # (R, s, t) = g_s[idx_t]
            sq = sq + 2 * (g_at_idx.transpose(1, 2) * (dx @ hh.transpose(1, 2))).sum(dim=(1, 2))
        return sq.clamp_min(0).sqrt().detach().cpu()


class CharPolicy(Policy):
    """TinyGPT over characters; the CPU policy the tests and benchmarks use."""

    def __init__(self, tokenizer: CharTokenizer, prompt_width: int, max_new_tokens: int, model_cfg: dict[str, Any],
                 device: torch.device) -> None:
        self.tok = tokenizer
        self.prompt_width = int(prompt_width)
        self.max_new_tokens = int(max_new_tokens)
        self.model_cfg = dict(model_cfg)
        self.device = device
        self.module: TinyGPT = TinyGPT(
            vocab_size=tokenizer.vocab_size, block_size=self.prompt_width + self.max_new_tokens,
            d_model=int(model_cfg.get("d_model", 64)), n_layer=int(model_cfg.get("n_layer", 2)),
            n_head=int(model_cfg.get("n_head", 4)), dropout=float(model_cfg.get("dropout", 0.0)),
        ).to(device)

    @property
    def eos_id(self) -> int:
        return self.tok.eos_id

    @property
    def pad_id(self) -> int:
        return self.tok.pad_id

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(prompts), self.prompt_width), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            enc = self.tok.encode(p)
            if len(enc) > self.prompt_width:
                raise ConfigError(f"prompt of {len(enc)} characters exceeds the policy's width {self.prompt_width}",
                                  field="cures.policy.prompt_width", fix="rebuild the policy from this prompt table")
            ids[i, self.prompt_width - len(enc):] = torch.tensor(enc)
        # The char model attends to its pad tokens (it is trained that way); the mask only marks real tokens.
        return ids, (ids != self.pad_id).long()

    def forward_parts(self, seqs: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.module
        t = seqs.shape[1]
        x0 = m.tok_emb(seqs)
        x = x0 + m.pos_emb(torch.arange(t, device=seqs.device))
        mask = torch.triu(torch.full((t, t), float("-inf"), device=seqs.device), diagonal=1)
        for blk in m.blocks:
            x = blk(x, mask)
        h = m.ln_f(x)
        return h @ m.tok_emb.weight.T, x0, h  # the same computation as TinyGPT.forward, with its parts exposed

    def decode(self, ids: torch.Tensor) -> str:
        return self.tok.decode(ids.tolist())

    def encode_completion(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def checkpoint(self) -> dict[str, Any]:
        return {"kind": "tiny_gpt", "state_dict": self.module.state_dict(), "tokenizer": self.tok.state(),
                "prompt_width": self.prompt_width, "max_new_tokens": self.max_new_tokens, "model_cfg": self.model_cfg}


class HFPolicy(Policy):
    """A Hugging Face causal LM: a local folder (config, weights, tokenizer) or a GGUF file; never downloads."""

    def __init__(self, path: str, max_new_tokens: int, device: torch.device, dtype: str = "auto",
                 field: str = "cures.policy.model") -> None:
        from datasel.models.causal_lm import load_causal_lm

        # a folder, or a GGUF file read through its cached safetensors conversion (datasel.models.causal_lm)
        self.module, self.tok = load_causal_lm(path, device, dtype, field)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.path = path
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        emb = self.module.get_input_embeddings()
        out = self.module.get_output_embeddings()
        self._cap: dict[str, torch.Tensor] = {}
        emb.register_forward_hook(lambda _m, _i, o: self._cap.__setitem__("x0", o))
        self._tied = out is not None and out.weight is emb.weight
        if self._tied:
            out.register_forward_hook(lambda _m, i, _o: self._cap.__setitem__("h", i[0]))

    @property
    def eos_id(self) -> int:
        return int(self.tok.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tok.pad_token_id)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc["input_ids"], enc["attention_mask"]

    def forward_parts(self, seqs: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # Left padding: positions count real tokens only, as generate() does.
        pos = (attn.cumsum(1) - 1).clamp_min(0)
        self._cap.clear()
        logits = self.module(input_ids=seqs, attention_mask=attn, position_ids=pos).logits
        return logits, self._cap["x0"], self._cap.get("h") if self._tied else None

    def _next_logits(self, ids: torch.Tensor, attn: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        # KV cache: the prompt once, then one token a step. Positions count real tokens only (as forward_parts
        # and generate() do); a finished row's pad tokens are masked out, so its cached keys never matter.
        pos = (attn.cumsum(1) - 1).clamp_min(0)
        if state is None:
            out = self.module(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        else:
            name, cache = state
            out = self.module(input_ids=ids[:, -1:], attention_mask=attn, position_ids=pos[:, -1:],
                              use_cache=True, **{name: cache})
        self._cap.clear()  # the embedding hooks fired; drop their tensors
        # transformers 5 names the cache ``cache``; 4.x (still supported) ``past_key_values``
        name = "cache" if out.get("cache") is not None else "past_key_values"
        return out.logits[:, -1], (name, out[name])

    def encode_completion(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: torch.Tensor) -> str:
        ids = ids.tolist()
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tok.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True)

    def checkpoint(self) -> dict[str, Any]:
        return {"kind": "hf", "path": self.path, "dtype": str(self.module.dtype).removeprefix("torch."),
                "state_dict": self.module.state_dict(),
                "max_new_tokens": self.max_new_tokens}


def build_policy(cfg: dict[str, Any], prompts: list[str], answers: list[str], device: torch.device) -> Policy:
    """The policy named by ``cures.policy.kind``; the char tokenizer covers every character of the prompt table."""
    kind = cfg.get("kind", "tiny_gpt")
    if kind == "tiny_gpt":
        tok = CharTokenizer.from_texts(prompts + answers)
        width = max(len(p) for p in prompts)
        longest = max(len(a) for a in answers) + 1
        max_new = int(cfg.get("max_new_tokens") or longest)
        return CharPolicy(tok, width, max_new, cfg.get("tiny_gpt", {}), device)
    if kind == "hf":
        from datasel.models.locate import lm_source

        # hf_path (a folder) is the older spelling of model: {path: ...}; model defaults to the packaged SmolLM2
        spec = {"path": cfg["hf_path"]} if cfg.get("hf_path") else cfg.get("model")
        source = lm_source(spec, "cures.policy.model")
        return HFPolicy(source, int(cfg.get("max_new_tokens") or 256), device, cfg.get("dtype", "auto"))
    raise ConfigError(f"unknown policy kind {kind!r}", field="cures.policy.kind", fix="use 'tiny_gpt' or 'hf'")


def load_policy(ckpt: dict[str, Any], device: torch.device) -> Policy:
    """Rebuild a policy from ``checkpoint()``'s dict."""
    if ckpt["kind"] == "tiny_gpt":
        pol: Policy = CharPolicy(CharTokenizer(ckpt["tokenizer"]["chars"]), ckpt["prompt_width"],
                                 ckpt["max_new_tokens"], ckpt["model_cfg"], device)
    else:
        pol = HFPolicy(ckpt["path"], ckpt["max_new_tokens"], device, ckpt.get("dtype", "auto"))
    pol.module.load_state_dict(ckpt["state_dict"])
    return pol
