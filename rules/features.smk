# Features: per-example gradient features of proxy checkpoints (or a local HF encoder for text), projected, stored
# as float16 shards (one job per shard, so a cluster profile spreads them), then gathered into an index per set.
#   results/features/<set>/<ckpt>-<split>/shard_<i>/   ckpt = seed<k>-epoch<e> | hf
#   results/features/<set>/<ckpt>-<split>/index.json
# Other stages read them through features_for(name) (scoring entries with `features: <set>`) or feature_index(spec)
# (selection policies dedup / kcenter / kmeans_coverage with `features: <set>[/<ckpt>]`).

FEATURE_POLICIES = ("dedup", "kcenter", "kmeans_coverage")


def _fsets():
    return config.get("features", {}).get("sets", {})


def feature_ckpts(name):
    fset = _fsets()[name]
    if fset.get("model", "proxy") == "hf":
        return ["hf"]
    epochs = fset.get("epochs") or sorted(set(config["proxy"]["checkpoints"]))
    return [f"seed{s}-epoch{e}" for s in fset.get("seeds", [0]) for e in epochs]


def features_for(spec):
    """Gathered index.json paths of feature set `spec` ("<set>" or "<set>/<ckpt>"), every checkpoint and split."""
    if not isinstance(spec, str):
        return []  # some methods use a `features` key for their own purposes (e.g. alchemist's input list)
    name, _, ckpt = spec.partition("/")
    if name not in _fsets():
        fail(f"names feature set '{name}', which does not exist", "features", f"use one of: {', '.join(_fsets())}"
             " (and put 'features' in stages)")
    ckpts = [ckpt] if ckpt else feature_ckpts(name)
    return [f"results/features/{name}/{c}-{s}/index.json" for c in ckpts for s in _fsets()[name].get("splits", ["train", "val"])]


def feature_index(spec, split="train"):
    """One training-split index for a policy: "<set>" takes the set's last checkpoint of its first seed."""
    name, _, ckpt = spec.partition("/")
    if name not in _fsets():
        fail(f"names feature set '{name}', which does not exist", "selection.policies.*.features",
             f"use one of: {', '.join(_fsets())}")
    return f"results/features/{name}/{ckpt or feature_ckpts(name)[-1]}-{split}/index.json"


if stage_on("features"):
    validate_section("features")

    for _name, _fset in _fsets().items():
        for _e in _fset.get("epochs", []):
            if _fset.get("model", "proxy") == "proxy" and _e not in config["proxy"]["checkpoints"]:
                fail(f"epoch {_e} is not a proxy checkpoint {sorted(config['proxy']['checkpoints'])}",
                     f"features.sets.{_name}.epochs", "add it to proxy.checkpoints or pick one of those")

    def _shard_inputs(wc):
        inputs = {"examples": "results/examples/examples.parquet", "meta": "results/examples/meta.json"}
        if wc.ckpt != "hf":
            seed, epoch = wc.ckpt[len("seed"):].split("-epoch")
            inputs["checkpoint"] = f"results/proxy/seed{seed}/epoch{epoch}.pt"
        return inputs

    rule features_shard:
        input:
            unpack(_shard_inputs),
        output:
            directory("results/features/{fset}/{ckpt}-{split}/shard_{shard}"),
        params:
            fset=lambda wc: _fsets()[wc.fset],
            shards=config["features"]["shards"],
            proxy=lambda wc: None if wc.ckpt == "hf" else {k: config["proxy"].get(k) for k in
                                                           ("model", "lr", "schedule", "epochs")},
        wildcard_constraints:
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
            shard=r"\d+",
        resources:
            gpu=1,
        log:
            "logs/features/{fset}/{ckpt}-{split}/shard_{shard}.log",
        benchmark:
            "logs/benchmarks/features/{fset}/{ckpt}-{split}/shard_{shard}.tsv"
        script:
            script_path("features_shard")

    rule features_gather:
        input:
            shards=lambda wc: expand("results/features/{fset}/{ckpt}-{split}/shard_{i}", fset=wc.fset, ckpt=wc.ckpt,
                                     split=wc.split, i=range(config["features"]["shards"])),
        output:
            "results/features/{fset}/{ckpt}-{split}/index.json",
        wildcard_constraints:
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
        log:
            "logs/features/{fset}/{ckpt}-{split}/gather.log",
        script:
            script_path("features_gather")

    register_targets("features", lambda: [p for name in _fsets() for p in features_for(name)])

    # Selections by policies that read features: the same step as `select`, with the feature index as an input so
    # Snakemake orders it after the features stage. Only names of such policies match this rule's wildcard.
    _fpol = [n for n, e in config.get("selection", {}).get("policies", {}).items()
             if e.get("policy") in FEATURE_POLICIES]
    if _fpol:

        def _fsel_entry(name):
            entry = dict(config["selection"]["policies"][name])
            entry["features"] = feature_index(entry.get("features") or next(iter(_fsets())))
            return entry

        def _fsel_inputs(wc):
            inputs = {"examples": "results/examples/examples.parquet", "features": _fsel_entry(wc.policy)["features"]}
            entry = config["selection"]["policies"][wc.policy]
            if entry.get("score"):
                inputs["scores"] = f"results/scores/{entry['score']}.parquet"
            return inputs

        rule select_features:
            input:
                unpack(_fsel_inputs),
            output:
                "results/selections/{policy}_keep{pct}.parquet",
            params:
                policy=lambda wc: _fsel_entry(wc.policy),
                fraction=lambda wc: int(wc.pct) / 100,
                seed=config["selection"]["seed"],
            wildcard_constraints:
                policy="|".join(_fpol),
                pct=r"\d+",
            log:
                "logs/select/{policy}_keep{pct}.log",
            script:
                script_path("select")

        ruleorder: select_features > select
