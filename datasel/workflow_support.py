"""The plain-Python part of the workflow's rule files: config slices, output path lists and input maps.

Every function takes the config (a dict, already validated with its defaults filled by :mod:`datasel.config`) or a
job's wildcards, never a Snakemake object, so the rule files stay declarative and this module imports without
Snakemake. A refusal is a :class:`~datasel.errors.ConfigError` naming the field; rules/common.smk turns it into the
run's one-line WorkflowError with the user's file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datasel.errors import ConfigError
from datasel.instruct.target_only import TARGET_POLICY
from datasel.models.locate import lm_source, locate_model

# selection policies that read gradient features (`features: <set>[/<ckpt>]`) instead of a score table
FEATURE_POLICIES = ("dedup", "kcenter", "kmeans_coverage")
# a generator's own options (data.mnist1d, data.docstring_topics) matter only to the source that reads them
GENERATOR_SECTIONS = ("mnist1d", "docstring_topics")


def canon(value: Any) -> Any:
    """A `params:` value with every mapping's keys sorted. Snakemake records a param as its repr and reruns a job
    whose repr differs, so without this, reordering keys in the YAML file would rerun every job reading them."""
    if isinstance(value, dict):
        return {k: canon(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canon(v) for v in value]
    return value


def without(section: Mapping[str, Any], *keys: str) -> Any:
    """A config section less the keys that decide which jobs exist (a seed count, a list of epochs) rather than what
    one job computes: a job's params carry only what its own outputs depend on."""
    return canon({k: v for k, v in section.items() if k not in keys})


def stage_on(config: Mapping[str, Any], name: str) -> bool:
    return name in config.get("stages", [])


# ---- data ----
def data_params(data: Mapping[str, Any]) -> Any:
    """The data section a prepare job depends on: the generator sections of other sources left out."""
    return without(data, *(s for s in GENERATOR_SECTIONS if s != data.get("source")))


# ---- features ----
def feature_sets(config: Mapping[str, Any]) -> dict[str, Any]:
    return config.get("features", {}).get("sets", {})


def feature_ckpts(config: Mapping[str, Any], name: str) -> list[str]:
    fset = feature_sets(config)[name]
    if fset.get("model", "proxy") == "hf":
        return ["hf"]
    epochs = fset.get("epochs") or sorted(set(config["proxy"]["checkpoints"]))
    return [f"seed{s}-epoch{e}" for s in fset.get("seeds", [0]) for e in epochs]


def features_for(config: Mapping[str, Any], spec: Any, root: str = "results") -> list[str]:
    """Gathered index.json paths of feature set `spec` ("<set>" or "<set>/<ckpt>"), every checkpoint and split."""
    if not isinstance(spec, str):
        return []  # some methods use a `features` key for their own purposes (e.g. alchemist's input list)
    fsets = feature_sets(config)
    name, _, ckpt = spec.partition("/")
    if name not in fsets:
        raise ConfigError(f"names feature set '{name}', which does not exist", field="features",
                          fix=f"use one of: {', '.join(fsets)} (in a features: sets: section)")
    ckpts = [ckpt] if ckpt else feature_ckpts(config, name)
    splits = fsets[name].get("splits", ["train", "val"])
    return [f"{root}/features/{name}/{c}-{s}/index.json" for c in ckpts for s in splits]


def feature_index(config: Mapping[str, Any], spec: str, split: str = "train", root: str = "results") -> str:
    """One training-split index for a policy: "<set>" takes the set's last checkpoint of its first seed."""
    fsets = feature_sets(config)
    name, _, ckpt = spec.partition("/")
    if name not in fsets:
        raise ConfigError(f"names feature set '{name}', which does not exist", field="selection.policies.*.features",
                          fix=f"use one of: {', '.join(fsets)}")
    # the first seed's, so adding a seed to the set adds features without changing what the policy reads
    first_seed = fsets[name].get("seeds", [0])[0]
    first = [c for c in feature_ckpts(config, name) if c == "hf" or c.startswith(f"seed{first_seed}-")]
    return f"{root}/features/{name}/{ckpt or first[-1]}-{split}/index.json"


def resolve_feature_policy(config: Mapping[str, Any], entry: Mapping[str, Any], root: str) -> Mapping[str, Any]:
    """A policy entry with `features` turned into the gathered index path it reads (feature policies only)."""
    if entry.get("policy") not in FEATURE_POLICIES:
        return entry
    fsets = feature_sets(config)
    if not fsets:
        raise ConfigError(f"policy '{entry['policy']}' reads gradient features but the config has no features "
                          "section", field="selection.policies.*.features",
                          fix="add a features: sets: section (see config/experiments/features_text.yaml)")
    return {**entry, "features": feature_index(config, entry.get("features") or next(iter(fsets)), root=root)}


def shard_inputs(wc: Any) -> dict[str, str]:
    """Inputs of one features_shard job: the examples, and the proxy checkpoint unless the set uses an HF encoder."""
    inputs = {"examples": f"{wc.root}/examples/examples.parquet", "meta": f"{wc.root}/examples/meta.json"}
    if wc.ckpt != "hf":
        seed, epoch = wc.ckpt[len("seed"):].split("-epoch")
        inputs["checkpoint"] = f"{wc.root}/proxy/seed{seed}/epoch{epoch}.pt"
    return inputs


# ---- scoring ----
def scorer_needs(config: Mapping[str, Any], name: str) -> Any:
    """What the scoring entry's method reads (``Scorer.needs``)."""
    from datasel.scoring import SCORERS  # the scorer registry imports torch: only when a score job is planned

    entry = config["scoring"][name]
    return SCORERS.get(entry.get("method", name), where=f"scoring.{name}.method").needs


def score_inputs(config: Mapping[str, Any], wc: Any) -> dict[str, Any]:
    entry = config["scoring"].get(wc.method)
    if entry is None:
        raise ConfigError(f"no scoring entry '{wc.method}'", field="scoring",
                          fix=f"use one of: {', '.join(config['scoring'])}")
    inputs: dict[str, Any] = {"examples": f"{wc.root}/examples/examples.parquet",
                              "meta": f"{wc.root}/examples/meta.json"}
    if "epoch" in entry:
        inputs["checkpoints"] = [f"{wc.root}/proxy/seed{s}/epoch{entry['epoch']}.pt"
                                 for s in range(config["proxy"]["seeds"])]
    if "features" in entry:
        inputs["features"] = features_for(config, entry["features"], wc.root)
    if "proxy_epochs" in scorer_needs(config, wc.method):  # forgetting, AUM: the proxy runs' per-epoch tables
        inputs["epoch_tables"] = [f"{wc.root}/proxy/seed{s}/epochs.parquet" for s in range(config["proxy"]["seeds"])]
    return inputs


# ---- selection and training ----
def selection_names(run_config: Mapping[str, Any]) -> list[str]:
    """Every selection table of one run: <policy>_keep<percent> per policy entry and kept fraction."""
    sel = run_config["selection"]
    # the target-alone baseline keeps no pool row at any fraction: one selection, <name>_keep0
    names = [f"{p}_keep{round(f * 100)}" for p, e in sel["policies"].items() for f in sel["fractions"]
             if e.get("policy") != TARGET_POLICY]
    names += [f"{p}_keep0" for p, e in sel["policies"].items() if e.get("policy") == TARGET_POLICY]
    # a filter entry also runs at kept fraction 1 (all it does not flag), to compare with the full noisy set
    names += [f"{p}_keep100" for p, e in sel["policies"].items()
              if e.get("policy") == "filter" and f"{p}_keep100" not in names]
    return names + ["full_keep100"]


def policy_entry(config: Mapping[str, Any], run_config: Mapping[str, Any], name: str, root: str) -> Mapping[str, Any]:
    """The policy's config entry; a policy that reads gradient features gets the index path of this run's."""
    if name == "full":
        return {"policy": "full"}
    return resolve_feature_policy(config, run_config["selection"]["policies"][name], root)


def select_inputs(entry: Mapping[str, Any], root: str) -> dict[str, str]:
    """Inputs of one select job, from its (resolved) policy entry."""
    inputs = {"examples": f"{root}/examples/examples.parquet", "meta": f"{root}/examples/meta.json"}
    if entry.get("score"):
        inputs["scores"] = f"{root}/scores/{entry['score']}.parquet"
    if entry.get("curriculum", {}).get("score"):
        inputs["order"] = f"{root}/scores/{entry['curriculum']['score']}.parquet"
    if entry.get("policy") in FEATURE_POLICIES:
        inputs["features"] = entry["features"]
    return inputs


def selection_info(selection: str) -> dict[str, Any]:
    policy, pct = selection.rsplit("_keep", 1)
    return {"method": policy, "fraction": int(pct) / 100}


def train_seed_outputs(seeds: Sequence[int]) -> list[str]:
    """One train job's outputs: a metrics table per seed, {root} and {selection} left as wildcards."""
    return [f"{{root}}/metrics/train/{{selection}}/seed{s}.parquet" for s in seeds]


def train_curve_outputs(seeds: Sequence[int]) -> list[str]:
    """One train job's training curves (datasel.training.curves): a table per seed, listed after the metrics."""
    return [f"{{root}}/curves/{{selection}}/seed{s}.parquet" for s in seeds]


def train_curves(run_config: Mapping[str, Any], root: str) -> list[str]:
    return [f"{root}/curves/{name}/seed{s}.parquet" for name in selection_names(run_config)
            for s in run_config["training"]["seeds"]]


def train_metrics(run_config: Mapping[str, Any], root: str) -> list[str]:
    return [f"{root}/metrics/train/{name}/seed{s}.parquet" for name in selection_names(run_config)
            for s in run_config["training"]["seeds"]]


# ---- the quality benchmark ----
def quality_run_cfg(config: Mapping[str, Any], noise: float) -> dict[str, Any]:
    """The configured experiment with the quality grid's noise level, fractions, seeds, curricula and budget."""
    q = config["quality"]
    cfg = copy.deepcopy(dict(config))
    cfg["data"]["noise"] = {**cfg["data"].get("noise", {}), "fraction": noise}
    # feature policies come in only when named in quality.policies (they need a features section)
    base = q.get("policies") or {n: e for n, e in config["selection"]["policies"].items()
                                 if e.get("policy") not in FEATURE_POLICIES}
    if "random" not in base:  # the report measures every margin against the entry named random
        base = {"random": {"policy": "random"}, **base}
    policies = dict(base)
    if q.get("curriculum"):
        policies.update({f"{n}_cl": {**e, "curriculum": q["curriculum"]} for n, e in base.items()})
    cfg["selection"] = {"fractions": [f for f in q["fractions"] if f < 1], "seed": config["selection"]["seed"],
                        "policies": policies}
    cfg["training"] = {**config["training"], "seeds": q["seeds"], "budget": q["budget"]}
    return cfg


def quality_roots(config: Mapping[str, Any]) -> list[str]:
    return [f"results/quality/noise{round(n * 100)}" for n in config["quality"]["noise"]]


def quality_scores(run_config: Mapping[str, Any], root: str) -> list[str]:
    """The run's score tables that are not stage-written (those may lack training rows)."""
    return [f"{root}/scores/{m}.parquet" for m in run_config["scoring"]]


# ---- DGA and GAPrune ----
def dga_tables(dga: Mapping[str, Any]) -> list[str]:
    """The DGA stage's tables: domain weights and metrics per strategy and seed, and the alignment scores."""
    runs = [(s, seed) for s in dga["strategies"] for seed in dga["seeds"]]
    out = [f"results/domain_weights/dga_{s}_seed{seed}.parquet" for s, seed in runs]
    out += [f"results/metrics/dga/{s}/seed{seed}.parquet" for s, seed in runs]
    if dga_alignment_on(dga):
        out.append("results/scores/dga_alignment.parquet")
    return out


def dga_alignment_on(dga: Mapping[str, Any]) -> bool:
    """Whether the per-example alignment table is built (from the first DGA seed's model)."""
    return "dga" in dga["strategies"] and bool((dga.get("alignment") or {}).get("enabled", True))


def dga_data_params(dga: Mapping[str, Any]) -> dict[str, Any]:
    """What the domain data depend on: ``dga.data``, the specific set's name, and for token-chunked text
    (``installed_text``) the tokenizer — the causal LM's model source unless ``data.tokenizer`` names one."""
    data = dict(dga["data"])
    if "specific" in dga.get("task", {}):
        data["specific"] = dga["task"]["specific"]
    model = dga.get("model") or {}
    if data.get("source") == "installed_text" and not data.get("tokenizer") and model.get("name") == "causal_lm":
        data["tokenizer"] = {k: model[k] for k in ("source", "path", "gguf_file") if model.get(k)} or {}
    return data


def dga_data_inputs(dga: Mapping[str, Any]) -> dict[str, str]:
    if dga["data"]["source"] == "examples":
        return {"examples": "results/examples/examples.parquet", "meta": "results/examples/meta.json"}
    return {}


def gaprune_runs(gap: Mapping[str, Any]) -> list[str]:
    """The GAPrune runs: the dense model and one per (pruning method, sparsity in percent)."""
    pcts = sorted({int(round(s * 100)) for s in gap["sparsities"]})
    return ["dense_s00"] + [f"{m}_s{p:02d}" for m in gap["methods"] for p in pcts]


def refusing(fail: Callable[[str, str, str], Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), a ConfigError it raises handed to `fail(problem, field, fix)` (the workflow's refusal)."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        return fail(exc.problem, exc.field, exc.fix)


# ---- cures (rules/cures.smk): functions of the config's `cures` section ----
def cures_iterations(cures: Mapping[str, Any]) -> list[int]:
    """The GRPO iterations whose checkpoint a run writes: every `checkpoint_every`-th and the last."""
    n, every = cures["budget"]["iterations"], cures["budget"]["checkpoint_every"]
    return [i for i in range(1, n + 1) if i % every == 0 or i == n]


def cures_model_input(cures: Mapping[str, Any]) -> dict[str, str]:
    """The hf policy's model file or folder, an input so that changing the model reruns the chain."""
    pol = cures["policy"]
    if pol["kind"] != "hf":
        return {}
    if pol.get("hf_path"):  # the older key: an error names it, not the model section the user left out
        return {"model": str(locate_model(pol["hf_path"], "cures.policy.hf_path"))}
    return {"model": lm_source(pol["model"], "cures.policy.model")}


def cures_tables(cures: Mapping[str, Any], kind: str) -> list[str]:
    """A run's per-(curriculum, seed) tables of one kind (`metrics` or `prompt_stats`), runs outer, seeds inner."""
    folder = {"metrics": "metrics/cures", "prompt_stats": "prompt_stats"}[kind]
    return [f"results/{folder}/{run}__seed{seed}.parquet" for run in cures["runs"] for seed in cures["seeds"]]


# ---- causal-LM data (data.source: instruct): the chain's LM ----
TINY_LM_DIR = "results/lm/base_model"
LM_SCORERS = ("target_alignment",)  # the scorers that read gradient features rather than class logits


def lm_data(config: Mapping[str, Any]) -> bool:
    """Whether the run selects instruction data for a causal LM."""
    return config.get("data", {}).get("source") == "instruct"


def resolve_lm_models(config: dict[str, Any]) -> dict[str, Any]:
    """The config with each causal-LM model that asks for a tiny random-init model pointed at the folder the
    workflow builds (``path``; the ``tiny`` settings stay, so changing them reruns what used the model)."""
    for section in ("proxy", "training"):
        model = config.get(section, {}).get("model") or {}
        if model.get("name") == "causal_lm" and model.get("tiny") is not None:
            config[section]["model"] = {**model, "path": TINY_LM_DIR}
    return config


def lm_model_path(model: Mapping[str, Any], field: str) -> str:
    """The chain's LM on disk: the tiny model's folder, a folder or .gguf file, a cached hub name's folder, or the
    packaged SmolLM2 (the default)."""
    if model.get("tiny") is not None:
        return TINY_LM_DIR
    return lm_source({k: model[k] for k in ("source", "path", "gguf_file") if model.get(k)}, field)


def check_lm_models(config: Mapping[str, Any]) -> None:
    """Causal-LM data: the proxy and the target runs are causal LMs (a smaller proxy may select for a larger target,
    LESS-T; the rows are rendered with the target's chat template), and record no training curve."""
    models = {s: config[s]["model"] for s in ("proxy", "training") if s in config}
    for section, model in models.items():
        if model.get("name") != "causal_lm":
            raise ConfigError(f"instruction data trains a causal LM, not '{model.get('name')}'",
                              field=f"{section}.model.name", fix="use name: causal_lm (see config/experiments/instruct.yaml)")
        if "lora" in model and model["lora"] is None:
            raise ConfigError("instruction data trains LoRA adapters (their gradients are LESS's features and "
                              "their moments its preconditioner); full fine-tuning is not offered",
                              field=f"{section}.model.lora", fix="give lora: {r: 8, alpha: 16} (or leave it out)")
    for name, entry in config.get("scoring", {}).items():
        if entry.get("method", name) not in LM_SCORERS:
            raise ConfigError(f"scoring method '{entry.get('method', name)}' scores class predictions; on instruction "
                              f"data the chain scores with {', '.join(LM_SCORERS)}", field=f"scoring.{name}.method",
                              fix="use method: target_alignment over a features set (LESS; config/experiments/instruct.yaml)")
    if int(config.get("training", {}).get("curve_points", 0)) > 0:
        raise ConfigError("causal-LM runs record no training curve (each point would be a pass of greedy answers)",
                          field="training.curve_points", fix="set training.curve_points: 0")
