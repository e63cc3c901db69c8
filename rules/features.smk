# Features: per-example gradient features of proxy checkpoints (or a local HF encoder for text), projected, stored
# as float16 shards (one job per shard, so a cluster profile spreads them), then gathered into an index per set.
#   <root>/features/<set>/<ckpt>-<split>/shard_<i>/   ckpt = seed<k>-epoch<e> | hf
#   <root>/features/<set>/<ckpt>-<split>/index.json
# <root> is the run root (results, or a quality-grid run), so each run's scores read its own proxies' features.
# Other stages read them through features_for(name, root) (scoring entries with `features: <set>`) or
# feature_index(spec, root) (selection policies dedup / kcenter / kmeans_coverage with `features: <set>[/<ckpt>]`).
# The rules exist whenever the config has a `features` section; the `features` stage only adds its sets to `all`.

FEATURE_POLICIES = ("dedup", "kcenter", "kmeans_coverage")


def _fsets():
    return config.get("features", {}).get("sets", {})


def feature_ckpts(name):
    fset = _fsets()[name]
    if fset.get("model", "proxy") == "hf":
        return ["hf"]
    epochs = fset.get("epochs") or sorted(set(config["proxy"]["checkpoints"]))
    return [f"seed{s}-epoch{e}" for s in fset.get("seeds", [0]) for e in epochs]


def features_for(spec, root="results"):
    """Gathered index.json paths of feature set `spec` ("<set>" or "<set>/<ckpt>"), every checkpoint and split."""
    if not isinstance(spec, str):
        return []  # some methods use a `features` key for their own purposes (e.g. alchemist's input list)
    name, _, ckpt = spec.partition("/")
    if name not in _fsets():
        fail(f"names feature set '{name}', which does not exist", "features", f"use one of: {', '.join(_fsets())}"
             " (in a features: sets: section)")
    ckpts = [ckpt] if ckpt else feature_ckpts(name)
    return [f"{root}/features/{name}/{c}-{s}/index.json" for c in ckpts for s in _fsets()[name].get("splits", ["train", "val"])]


def feature_index(spec, split="train", root="results"):
    """One training-split index for a policy: "<set>" takes the set's last checkpoint of its first seed."""
    name, _, ckpt = spec.partition("/")
    if name not in _fsets():
        fail(f"names feature set '{name}', which does not exist", "selection.policies.*.features",
             f"use one of: {', '.join(_fsets())}")
    # the first seed's, so adding a seed to the set adds features without changing what the policy reads
    first = [c for c in feature_ckpts(name) if c == "hf" or c.startswith(f"seed{_fsets()[name].get('seeds', [0])[0]}-")]
    return f"{root}/features/{name}/{ckpt or first[-1]}-{split}/index.json"


def resolve_feature_policy(entry, root):
    """A policy entry with `features` turned into the gathered index path it reads (feature policies only)."""
    if entry.get("policy") not in FEATURE_POLICIES:
        return entry
    if not _fsets():
        fail(f"policy '{entry['policy']}' reads gradient features but the config has no features section",
             "selection.policies.*.features", "add a features: sets: section (see config/experiments/features_text.yaml)")
    return {**entry, "features": feature_index(entry.get("features") or next(iter(_fsets())), root=root)}


if "features" in config:
    for _name, _fset in _fsets().items():
        if _fset.get("model", "proxy") == "hf" and not CHECKS_DONE:
            from datasel.errors import ConfigError
            from datasel.models.locate import locate_model

            try:  # a missing encoder is refused now, once, rather than in every shard job's log
                locate_model(str(_fset["hf"]["path"]), f"features.sets.{_name}.hf.path")
            except ConfigError as exc:
                fail(exc.problem, exc.field, exc.fix)
        for _e in _fset.get("epochs", []):
            if _fset.get("model", "proxy") == "proxy" and _e not in config["proxy"]["checkpoints"]:
                fail(f"epoch {_e} is not a proxy checkpoint {sorted(config['proxy']['checkpoints'])}",
                     f"features.sets.{_name}.epochs", "add it to proxy.checkpoints or pick one of those")

    def _shard_inputs(wc):
        inputs = {"examples": f"{wc.root}/examples/examples.parquet", "meta": f"{wc.root}/examples/meta.json"}
        if wc.ckpt != "hf":
            seed, epoch = wc.ckpt[len("seed"):].split("-epoch")
            inputs["checkpoint"] = f"{wc.root}/proxy/seed{seed}/epoch{epoch}.pt"
        return inputs

    rule features_shard:
        input:
            unpack(_shard_inputs),
        output:
            directory("{root}/features/{fset}/{ckpt}-{split}/shard_{shard}"),
        params:
            # one shard of one checkpoint and split: not the lists of seeds, epochs and splits the set spans
            fset=lambda wc: without(_fsets()[wc.fset], "seeds", "epochs", "splits"),
            shards=config["features"]["shards"],
            proxy=lambda wc: None if wc.ckpt == "hf" else canon({k: config["proxy"].get(k) for k in
                                                                 ("model", "lr", "schedule", "epochs")}),
        wildcard_constraints:
            root=ROOT_RE,
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
            shard=r"\d+",
        threads: THREADS
        resources:
            **job_resources("features_shard", gpu=True),
        log:
            "logs/{root}/features/{fset}/{ckpt}-{split}/shard_{shard}.log",
        benchmark:
            "logs/benchmarks/{root}/features/{fset}/{ckpt}-{split}/shard_{shard}.tsv"
        script:
            script_path("features_shard")

    # concatenates the shards' index files: on a cluster, on the submitting host
    localrules: features_gather

    rule features_gather:
        input:
            shards=lambda wc: expand("{root}/features/{fset}/{ckpt}-{split}/shard_{i}", root=wc.root, fset=wc.fset,
                                     ckpt=wc.ckpt, split=wc.split, i=range(config["features"]["shards"])),
        output:
            "{root}/features/{fset}/{ckpt}-{split}/index.json",
        wildcard_constraints:
            root=ROOT_RE,
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
        log:
            "logs/{root}/features/{fset}/{ckpt}-{split}/gather.log",
        script:
            script_path("features_gather")

    if stage_on("features"):
        register_targets("features", lambda: [p for name in _fsets() for p in features_for(name)])
