# Scoring: one table per named entry of config["scoring"]; the entry's `method` picks a registered scorer.


rule score:
    input:
        unpack(score_inputs),
    output:
        "{root}/scores/{method}.parquet",
    log:
        "logs/{root}/scores/{method}.log",
    benchmark:
        "logs/benchmarks/{root}/scores/{method}.tsv"
    wildcard_constraints:
        root=ROOT_RE,
        # only configured entries: stages such as DGA and GAPrune write their own score tables
        # (always defined, so stages can order their own score rules before it; none without a scoring section)
        method="|".join(re.escape(m) for m in config.get("scoring", {})) or "(?!)",
    threads: THREADS
    resources:
        **job_resources("score", gpu=True),
    params:
        scoring=lambda wc: canon(config["scoring"][wc.method]),
        model_cfg=lambda wc: canon(config["proxy"]["model"]) if "epoch" in config["scoring"][wc.method] else None,
        # a scorer that trains its own cross-validated proxies (cleanlab) reads the proxy recipe (the seed count
        # reaches a score through its inputs, one checkpoint per seed)
        proxy=lambda wc: without(config["proxy"], "seeds") if "proxy_config" in scorer_needs(wc.method) else None,
    script:
        script_path("score")
