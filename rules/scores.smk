# Scoring: one table per named entry of config["scoring"]; the entry's `method` picks a registered scorer.


def score_inputs(wc):
    entry = config["scoring"].get(wc.method)
    if entry is None:
        fail(f"no scoring entry '{wc.method}'", "scoring", f"use one of: {', '.join(config['scoring'])}")
    inputs = {"examples": f"{wc.root}/examples/examples.parquet", "meta": f"{wc.root}/examples/meta.json"}
    if "epoch" in entry:
        inputs["checkpoints"] = expand(
            "{root}/proxy/seed{seed}/epoch{epoch}.pt", root=wc.root, seed=range(config["proxy"]["seeds"]),
            epoch=entry["epoch"],
        )
    if "features" in entry:
        inputs["features"] = features_for(entry["features"], wc.root)
    if "proxy_epochs" in scorer_needs(wc.method):  # forgetting, AUM: the proxy runs' per-epoch tables
        inputs["epoch_tables"] = expand("{root}/proxy/seed{seed}/epochs.parquet", root=wc.root,
                                        seed=range(config["proxy"]["seeds"]))
    return inputs


def scorer_needs(name):
    """What the scoring entry's method reads (``Scorer.needs``)."""
    from datasel.scoring import SCORERS

    entry = config["scoring"][name]
    return SCORERS.get(entry.get("method", name), where=f"scoring.{name}.method").needs


rule score:
    input:
        unpack(score_inputs),
    output:
        "{root}/scores/{method}.parquet",
    params:
        scoring=lambda wc: canon(config["scoring"][wc.method]),
        model_cfg=lambda wc: canon(config["proxy"]["model"]) if "epoch" in config["scoring"][wc.method] else None,
        # a scorer that trains its own cross-validated proxies (cleanlab) reads the proxy recipe (the seed count
        # reaches a score through its inputs, one checkpoint per seed)
        proxy=lambda wc: without(config["proxy"], "seeds") if "proxy_config" in scorer_needs(wc.method) else None,
    wildcard_constraints:
        root=ROOT_RE,
        # only configured entries: stages such as DGA and GAPrune write their own score tables
        # (always defined, so stages can order their own score rules before it; none without a scoring section)
        method="|".join(re.escape(m) for m in config.get("scoring", {})) or "(?!)",
    threads: THREADS
    resources:
        **job_resources("score", gpu=True),
    log:
        "logs/{root}/scores/{method}.log",
    benchmark:
        "logs/benchmarks/{root}/scores/{method}.tsv"
    script:
        script_path("score")
