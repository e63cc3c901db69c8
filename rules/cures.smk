# CurES: prompt curricula for RL with verifiable rewards. prompts -> warm-started policy per seed -> one GRPO run
# per (curriculum, seed) declaring its per-iteration checkpoints -> metrics + prompt_stats tables -> plots.


if stage_on("cures"):
    CURES = config["cures"]

    # writing the prompt table and the report are seconds of work: on a cluster, on the submitting host
    localrules:
        cures_prompts,
        cures_report,

    rule cures_prompts:
        output:
            prompts="results/rl_prompts/prompts.parquet",
        log:
            "logs/cures/prompts.log",
        params:
            prompts=canon(CURES["prompts"]),
            seed=CURES["prompts"]["seed"],
        script:
            script_path("cures_prompts")

    rule cures_warmstart:
        input:
            **support.refusing(fail, support.cures_model_input, CURES),
            prompts="results/rl_prompts/prompts.parquet",
        output:
            ckpt="results/rl/warmstart/seed{seed}.pt",
            history="results/rl/warmstart/seed{seed}.json",
        log:
            "logs/cures/warmstart/seed{seed}.log",
        benchmark:
            "logs/benchmarks/cures/warmstart/seed{seed}.tsv"
        wildcard_constraints:
            seed=r"\d+",
        threads: THREADS
        resources:
            **job_resources("cures_warmstart", gpu=True),
        params:
            policy=canon({**CURES["policy"], "device": CURES["device"]}),
            warmstart=canon(CURES["warmstart"]),
        script:
            script_path("cures_warmstart")

    rule cures_train:
        input:
            prompts="results/rl_prompts/prompts.parquet",
            ckpt="results/rl/warmstart/seed{seed}.pt",
        output:
            metrics="results/metrics/cures/{run}__seed{seed}.parquet",
            prompt_stats="results/prompt_stats/{run}__seed{seed}.parquet",
            iterations=expand("results/rl/{{run}}/seed{{seed}}/iter{i}.pt", i=support.cures_iterations(CURES)),
        log:
            "logs/cures/train/{run}__seed{seed}.log",
        benchmark:
            "logs/benchmarks/cures/train/{run}__seed{seed}.tsv"
        wildcard_constraints:
            run=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            seed=r"\d+",
        threads: THREADS
        resources:
            **job_resources("cures_train", gpu=True),
        params:
            run=lambda wc: canon(CURES["runs"][wc.run]),
            budget=canon(CURES["budget"]),
            grpo=canon(CURES["grpo"]),
            eval=canon(CURES["eval"]),
            policy={"device": CURES["device"]},
        script:
            script_path("cures_train")

    rule cures_report:
        input:
            metrics=support.cures_tables(CURES, "metrics"),
            prompt_stats=support.cures_tables(CURES, "prompt_stats"),
        output:
            accuracy=report("results/plots/cures_accuracy.png", category="CurES"),
            difficulty=report("results/plots/cures_difficulty.png", category="CurES"),
            summary="results/rl/summary.json",
        log:
            "logs/cures/report.log",
        script:
            script_path("cures_report")

    register_targets(
        "cures",
        lambda: [
            *support.cures_tables(CURES, "metrics"),
            *support.cures_tables(CURES, "prompt_stats"),
            *rules.cures_report.output,
        ],
    )
