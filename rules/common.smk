# Helpers shared by all the rule files, bound to this run's config and state (target registration, refusals, config
# slices). Every section was validated, and its defaults filled, by datasel.config in the Snakefile.
import json

from datasel import workflow_support as support
from datasel.workflow_support import (
    FEATURE_POLICIES,
    canon,
    selection_info,
    train_curve_outputs,
    train_seed_outputs,
    without,
)

SCRIPTS = str(Path(workflow.basedir, "workflow", "scripts"))


def register_targets(name, fn):
    """Register a stage's final outputs (a zero-argument function returning paths) for `rule all` and the catalog."""
    TARGETS[name] = fn


def stage_on(name):
    return support.stage_on(config, name)


# NOTE: must not be called `script`: that name is used by the code Snakemake generates for `script:` rules.
def script_path(name):
    return f"{SCRIPTS}/{name}.py"


def all_tables():
    return [t for name in sorted(TARGETS) for t in TARGETS[name]()]


# ---- cross-section checks the JSON schema cannot express, reported as one short WorkflowError ----
from snakemake.exceptions import WorkflowError


def fail(msg, field, fix):
    """One short refusal naming the user's config file that holds the field."""
    where = CONFIG_SOURCE.file_of(field.split(".")) if field else None
    raise WorkflowError(f"{f'{where}: ' if where else ''}config field '{field}': {msg}\n  fix: {fix}")


STAGE_SCORES = set()


def register_score_table(name):
    """A score table written by a stage's own rules (results/scores/<name>.parquet) that policies may name."""
    STAGE_SCORES.add(name)


def check_selection_config():
    # names are checked against the registries here, before any job runs, not when a score/select job starts
    from datasel.scoring import SCORERS
    from datasel.selection import POLICIES

    for name, entry in config["scoring"].items():
        method = entry.get("method", name)
        if method not in SCORERS.names():
            fail(
                f"unknown scoring method '{method}'",
                f"scoring.{name}.method",
                f"use one of: {', '.join(SCORERS.names())}",
            )
    for name, entry in config["selection"]["policies"].items():
        if entry["policy"] == support.TARGET_POLICY:
            if not support.lm_data(config):
                fail(
                    "policy 'target' (training on the target rows alone) is a baseline for instruction data",
                    f"selection.policies.{name}.policy",
                    "remove it, or use data.source: instruct",
                )
            continue
        if entry["policy"] not in POLICIES.names():
            fail(
                f"unknown selection policy '{entry['policy']}'",
                f"selection.policies.{name}.policy",
                f"use one of: {', '.join(POLICIES.names())}",
            )
    for name in config["scoring"]:
        if name in STAGE_SCORES:
            fail(
                f"'{name}' is the score table a stage writes itself",
                f"scoring.{name}",
                "give this scoring entry another name",
            )
    # a features-only run has no proxy: any scoring entry that names an epoch is then refused here
    ckpts = set(config.get("proxy", {}).get("checkpoints", []))
    for name, entry in config["scoring"].items():
        epoch = entry.get("epoch")
        if epoch is not None and epoch not in ckpts:
            fail(
                f"epoch {epoch} is not a proxy checkpoint {sorted(ckpts)}",
                f"scoring.{name}.epoch",
                "add it to proxy.checkpoints or pick one of those",
            )
    for name, entry in config["selection"]["policies"].items():
        for key in ("score",):
            ref = entry.get(key)
            if ref is not None and ref not in config["scoring"] and ref not in STAGE_SCORES:
                fail(
                    f"names scoring entry '{ref}', which does not exist",
                    f"selection.policies.{name}.{key}",
                    f"use one of: {', '.join([*config['scoring'], *sorted(STAGE_SCORES)])}",
                )
        ref = entry.get("curriculum", {}).get("score")
        if ref is not None and ref not in config["scoring"]:
            fail(
                f"names scoring entry '{ref}', which does not exist",
                f"selection.policies.{name}.curriculum.score",
                f"use one of: {', '.join(config['scoring'])}",
            )


# ---- runs: the selection chain runs under a root folder. `results` is the configured experiment; the quality
# benchmark adds `results/quality/noise<pct>` runs whose config is derived from the same file (see quality.smk).
import copy
import difflib
import re

ROOT_RE = r"results(/quality/noise\d+)?"
_RUN_CACHE = {}


def run_cfg(root):
    """The config sections (data, proxy, scoring, selection, training) that apply to one run root."""
    if root == "results":
        return config
    if root not in _RUN_CACHE:
        m = re.fullmatch(r"results/quality/noise(\d+)", root)
        if m is None or "quality" not in config:
            fail(f"no run '{root}'", "quality", "add a quality section (config/experiments/quality.yaml)")
        _RUN_CACHE[root] = support.quality_run_cfg(config, int(m.group(1)) / 100)
    return _RUN_CACHE[root]


# ---- the rule files' config slices and path lists (datasel/workflow_support.py), bound to this run's config ----
def data_files(root="results"):
    """The user's data files (or a dataset folder's files): inputs of prepare, so a missing one is refused."""
    try:
        return data_inputs(run_cfg(root)["data"], CONFIG_SOURCE.file_of(("data", "path")))
    except DataselError as exc:
        raise WorkflowError(str(exc)) from None


LM_DATA = support.lm_data(config)
if LM_DATA and "training" in config:  # the chain's LM, found now: a missing model is one refusal before any job
    LM_PATH = support.refusing(fail, support.lm_model_path, config["training"]["model"], "training.model")
    if config["proxy"]["model"] != config["training"]["model"]:
        support.refusing(fail, support.lm_model_path, config["proxy"]["model"], "proxy.model")


def prepare_inputs(wc):
    """The prepare job's inputs: the data files (content-checked, so `ancient`), or instruction data's role files by
    mtime (a generated file's digest is unknown before the run) and the LM that renders and tokenizes them."""
    if LM_DATA:
        return {"data": data_files(wc.root), "model": LM_PATH}
    return {"data": ancient(data_files(wc.root))}


def data_params(root):
    return support.data_params(run_cfg(root)["data"])


def features_for(spec, root="results"):
    return support.refusing(fail, support.features_for, config, spec, root)


def scorer_needs(name):
    return support.scorer_needs(config, name)


def score_inputs(wc):
    return support.refusing(fail, support.score_inputs, config, wc)


def selection_names(root="results"):
    return support.selection_names(run_cfg(root))


def policy_entry(name, root="results"):
    return support.refusing(fail, support.policy_entry, config, run_cfg(root), name, root)


def select_inputs(wc):
    return support.select_inputs(policy_entry(wc.policy, wc.root), wc.root)


def train_metrics(root="results"):
    return support.train_metrics(run_cfg(root), root)


def train_curves(root="results"):
    return support.train_curves(run_cfg(root), root)


def quality_roots():
    return support.quality_roots(config)


def quality_scores(root):
    return support.quality_scores(run_cfg(root), root)


def check_stages():
    """Every stage named in `stages` exists and has its config section (checked before any rule file reads it)."""
    known = {"selection"} | {p.name.split(".")[0] for p in SCHEMAS_DIR.glob("*.schema.yaml")} - {"config"}
    for stage in config.get("stages", []):
        if stage not in known:
            fail(f"unknown stage '{stage}'", "stages", f"use some of: {', '.join(sorted(known))}")
        if stage != "selection" and stage not in config:
            fail(
                f"stage '{stage}' is on but the config has no '{stage}' section",
                "stages",
                f"add a '{stage}:' section (see config/experiments/) or take '{stage}' out of stages",
            )


def check_models():
    from datasel.models.registry import MODELS, load_builtin_models

    load_builtin_models()

    for section in ("proxy", "training"):
        if section not in config:
            continue
        name = config[section]["model"]["name"]
        if name not in MODELS:
            fail(f"unknown model '{name}'", f"{section}.model.name", f"use one of: {', '.join(sorted(MODELS))}")


# The run's own Snakemake checks the config once. A cluster job parses this file twice more (the job's Snakemake and
# the step it starts, --mode remote / subprocess) and would re-import the model and method registries (torch:
# seconds per parse) to check names the run already accepted.
CHECKS_DONE = workflow.remote_exec or workflow.subprocess_exec

check_stages()
if not CHECKS_DONE:
    check_models()


# ---- what each job asks a cluster for (profiles/slurm lists no rule: every rule states its needs here) ----
# Threads: the torch intra-op threads every step runs with (datasel.runtime.set_threads), so a Slurm job's
# --cpus-per-task is exactly what it uses. Runtime and memory: config compute.jobs (`default`, `gpu`, the rule's own
# entry). A rule that runs torch on compute.device says so with gpu=True; it asks for one GPU unless the device is
# cpu, the one switch for a cluster (or a run) without GPUs.
THREADS = config["compute"]["threads"]


def _rule_names():
    """Every rule name the rule files define (also those of stages this config leaves out)."""
    names = set()
    for smk in Path(workflow.basedir, "rules").glob("*.smk"):
        names.update(re.findall(r"^\s*(?:rule (\w+)|use rule \w+ as (\w+))", smk.read_text(), flags=re.M))
    return {n for pair in names for n in pair if n}


def check_jobs_config():
    known = _rule_names()
    for name in config["compute"]["jobs"]:
        if name not in known | {"default", "gpu"}:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            fail(
                f"no rule '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                f"compute.jobs.{name}",
                f"name a rule ({', '.join(sorted(known))}), `default` or `gpu`",
            )


# A cluster run (--jobs, the slurm profile) submits jobs, and each job's own Snakemake (remote mode) must state the
# same resources; a local run runs its jobs here and counts GPUs itself.
LOCAL_RUN = workflow.resource_settings.nodes is None and not workflow.remote_exec


def job_resources(rule, gpu=False):
    """Snakemake resources of one rule: runtime/mem_mb (and partition, constraint, GPU type) from compute.jobs, and
    one GPU for a GPU job unless compute.device is cpu: gpu=1 (sbatch --gpus=1, or --gpus=<gpu_model>:1), or on a
    cluster run with compute.gpu_request gres, gres=gpu:1 (sbatch --gres=gpu:1, or gpu:<gpu_model>:1). A local run
    always counts gpu=1: that is what `--resources gpu=N` and the GPU claim (datasel.devices) go by."""
    jobs = config["compute"]["jobs"]
    use_gpu = gpu and config["compute"]["device"] != "cpu"
    res = {**jobs.get("default", {}), **(jobs.get("gpu", {}) if use_gpu else {}), **jobs.get(rule, {})}
    if "gpu_model" in res and not use_gpu:
        where = "compute.jobs.default" if "gpu_model" in jobs.get("default", {}) else f"compute.jobs.{rule}"
        fail(
            f"gpu_model is set for rule '{rule}', which "
            + ("uses no GPU" if not gpu else "asks for no GPU (compute.device: cpu)"),
            where,
            "give the GPU type under compute.jobs.gpu (applied to GPU jobs only)",
        )
    if not use_gpu:
        return res
    if config["compute"]["gpu_request"] == "gres" and not LOCAL_RUN:
        model = res.pop("gpu_model", None)
        return {**res, "gres": f"gpu:{model}:1" if model else "gpu:1"}
    return {**res, "gpu": 1}


check_jobs_config()


# ---- GPUs of a local run: as many GPU jobs at once as there are GPUs, each on its own (datasel.devices) ----
# The pool (CUDA_VISIBLE_DEVICES, else nvidia-smi -L; DATASEL_FAKE_GPUS in tests and dry runs) is found here without
# starting CUDA, handed to the jobs in DATASEL_GPU_POOL, and sets the `gpu` resource unless the user gave one
# (`--resources gpu=2` caps it). A profile cannot run code, so this is how `--profile gpu` learns the count.
# A cluster run leaves both to the scheduler: its jobs see the GPUs Slurm gave them.
if workflow.is_main_process:
    import os

    from datasel.devices import POOL_ENV, visible_gpus

    if LOCAL_RUN:
        try:
            GPU_POOL = visible_gpus()
        except DataselError as _exc:
            raise WorkflowError(str(_exc)) from None
        os.environ[POOL_ENV] = ",".join(GPU_POOL)
        if GPU_POOL and "gpu" not in workflow.global_resources:
            workflow.global_resources["gpu"] = len(GPU_POOL)
        if GPU_POOL:
            from snakemake.logging import logger

            _cap = workflow.global_resources.get("gpu").value
            logger.info(
                f"datasel: {len(GPU_POOL)} GPU(s) visible ({','.join(GPU_POOL)}); at most {_cap} GPU job(s) "
                "at once, each on a device of its own"
            )
    else:
        os.environ.pop(POOL_ENV, None)
