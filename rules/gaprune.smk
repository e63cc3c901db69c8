# GAPrune: triplets (stdlib code/prose or user data) -> Fisher + alignment statistics -> one job per
# (pruning method, sparsity) that prunes, evaluates, retrains with the mask fixed and evaluates again -> metrics,
# param_scores, plot; plus the per-example extension (ours) as a score table.


if stage_on("gaprune"):
    GAP = config["gaprune"]
    GAP_MODEL = {k: GAP[k] for k in ("model", "max_seq_len", "device", "seed")}

    rule gaprune_triplets:
        output:
            triplets="results/gaprune/triplets.parquet",
        log:
            "logs/gaprune/triplets.log",
        benchmark:
            "logs/benchmarks/gaprune/triplets.tsv"
        threads: THREADS
        resources:
            **job_resources("gaprune_triplets", gpu=True),
        params:
            cfg=canon({**GAP_MODEL, "data": GAP["data"]}),
        script:
            script_path("gaprune_triplets")

    rule gaprune_stats:
        input:
            triplets="results/gaprune/triplets.parquet",
        output:
            stats="results/gaprune/stats.pt",
        log:
            "logs/gaprune/stats.log",
        benchmark:
            "logs/benchmarks/gaprune/stats.tsv"
        threads: THREADS
        resources:
            **job_resources("gaprune_stats", gpu=True),
        params:
            cfg=canon({**GAP_MODEL, "prune": GAP["prune"], "fisher": GAP["fisher"]}),
        script:
            script_path("gaprune_stats")

    rule gaprune_run:
        input:
            triplets="results/gaprune/triplets.parquet",
            stats="results/gaprune/stats.pt",
        output:
            metrics="results/gaprune/runs/{method}_s{pct}.parquet",
            run_dir=directory("results/gaprune/models/{method}_s{pct}"),
        log:
            "logs/gaprune/run/{method}_s{pct}.log",
        benchmark:
            "logs/benchmarks/gaprune/run/{method}_s{pct}.tsv"
        wildcard_constraints:
            method=r"[a-z_]+",
            pct=r"\d+",
        threads: THREADS
        resources:
            **job_resources("gaprune_run", gpu=True),
        params:
            cfg=lambda wc: canon(
                {
                    **GAP_MODEL,
                    "prune": GAP["prune"],
                    "retrain": GAP["retrain"],
                    "eval": GAP["eval"],
                    "save_models": GAP["save_models"],
                    **({"dai": GAP["dai"]} if wc.method.startswith("dai") else {}),
                }
            ),
        script:
            script_path("gaprune_run")

    # one table from the finished runs: on a cluster, on the submitting host
    localrules:
        gaprune_gather,

    rule gaprune_gather:
        input:
            metrics=lambda wc: expand("results/gaprune/runs/{r}.parquet", r=support.gaprune_runs(GAP)),
            run_dirs=lambda wc: expand("results/gaprune/models/{r}", r=support.gaprune_runs(GAP)),
            stats="results/gaprune/stats.pt",
        output:
            metrics="results/metrics/gaprune.parquet",
            param_scores="results/param_scores/gaprune.parquet",
            plot=report("results/plots/gaprune.png", category="GAPrune"),
        log:
            "logs/gaprune/gather.log",
        params:
            cfg=canon({**GAP_MODEL, "prune": GAP["prune"], "dai": GAP["dai"], "plot_metric": GAP["plot_metric"]}),
        script:
            script_path("gaprune_gather")

    rule gaprune_example_scores:
        input:
            triplets="results/gaprune/triplets.parquet",
            stats="results/gaprune/stats.pt",
        output:
            scores="results/scores/gaprune_example.parquet",
        log:
            "logs/gaprune/example_scores.log",
        benchmark:
            "logs/benchmarks/gaprune/example_scores.tsv"
        threads: THREADS
        resources:
            **job_resources("gaprune_example_scores", gpu=True),
        params:
            cfg=canon({**GAP_MODEL, **GAP["example_scores"], "scale": GAP["fisher"]["scale"]}),
        script:
            script_path("gaprune_scores")

    # results/scores/{method}.parquet is also the generic `score` rule's pattern: this table is GAPrune's own
    ruleorder: gaprune_example_scores > score

    if GAP["example_scores"]["enabled"]:
        register_score_table("gaprune_example")  # selection policies may rank by it (ours, labelled as such)
    register_targets(
        "gaprune",
        lambda: [
            *rules.gaprune_gather.output,
            *(rules.gaprune_example_scores.output if GAP["example_scores"]["enabled"] else []),
        ],
    )
