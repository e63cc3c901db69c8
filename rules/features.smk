# Features: per-example gradient features of proxy checkpoints (or a local HF encoder for text), projected, stored
# as float16 shards (one job per shard, so a cluster profile spreads them), then gathered into an index per set.
#   <root>/features/<set>/<ckpt>-<split>/shard_<i>/   ckpt = seed<k>-epoch<e> | hf
#   <root>/features/<set>/<ckpt>-<split>/index.json
# <root> is the run root (results, or a quality-grid run), so each run's scores read its own proxies' features.
# Other stages read them through features_for(name, root) (scoring entries with `features: <set>`) or
# policy_entry(name, root) (selection policies dedup / kcenter / kmeans_coverage with `features: <set>[/<ckpt>]`).
# The rules exist whenever the config has a `features` section; the `features` stage only adds its sets to `all`.


if "features" in config:
    for _name, _fset in support.feature_sets(config).items():
        if _fset.get("model", "proxy") == "hf" and not CHECKS_DONE:
            from datasel.errors import ConfigError
            from datasel.models.locate import locate_model

            try:  # a missing encoder is refused now, once, rather than in every shard job's log
                locate_model(str(_fset["hf"]["path"]), f"features.sets.{_name}.hf.path")
            except ConfigError as exc:
                fail(exc.problem, exc.field, exc.fix)
        for _e in _fset.get("epochs", []):
            if _fset.get("model", "proxy") == "proxy" and _e not in config["proxy"]["checkpoints"]:
                fail(
                    f"epoch {_e} is not a proxy checkpoint {sorted(config['proxy']['checkpoints'])}",
                    f"features.sets.{_name}.epochs",
                    "add it to proxy.checkpoints or pick one of those",
                )

    rule features_shard:
        input:
            unpack(support.shard_inputs),
        output:
            directory("{root}/features/{fset}/{ckpt}-{split}/shard_{shard}"),
        log:
            "logs/{root}/features/{fset}/{ckpt}-{split}/shard_{shard}.log",
        benchmark:
            "logs/benchmarks/{root}/features/{fset}/{ckpt}-{split}/shard_{shard}.tsv"
        wildcard_constraints:
            root=ROOT_RE,
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
            shard=r"\d+",
        threads: THREADS
        resources:
            **job_resources("features_shard", gpu=True),
        params:
            # one shard of one checkpoint and split: not the lists of seeds, epochs and splits the set spans
            fset=lambda wc: without(support.feature_sets(config)[wc.fset], "seeds", "epochs", "splits"),
            shards=config["features"]["shards"],
            proxy=lambda wc: (
                None
                if wc.ckpt == "hf"
                else canon({k: config["proxy"].get(k) for k in ("model", "lr", "schedule", "epochs")})
            ),
        script:
            script_path("features_shard")

    # concatenates the shards' index files: on a cluster, on the submitting host
    localrules:
        features_gather,

    rule features_gather:
        input:
            shards=lambda wc: expand(
                "{root}/features/{fset}/{ckpt}-{split}/shard_{i}",
                root=wc.root,
                fset=wc.fset,
                ckpt=wc.ckpt,
                split=wc.split,
                i=range(config["features"]["shards"]),
            ),
        output:
            "{root}/features/{fset}/{ckpt}-{split}/index.json",
        log:
            "logs/{root}/features/{fset}/{ckpt}-{split}/gather.log",
        wildcard_constraints:
            root=ROOT_RE,
            fset=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            ckpt=r"seed\d+-epoch\d+|hf",
            split=r"train|val|test",
        script:
            script_path("features_gather")

    if stage_on("features"):
        register_targets(
            "features", lambda: [p for name in support.feature_sets(config) for p in features_for(name)]
        )
