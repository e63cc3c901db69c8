# CurES: prompt curricula for RL with verifiable rewards. prompts -> warm-started policy per seed -> one GRPO run
# per (curriculum, seed) declaring its per-iteration checkpoints -> metrics + prompt_stats tables -> plots.


if stage_on("cures"):
    CURES = config["cures"]

    def cures_iterations():
        b = CURES["budget"]
        n, every = b["iterations"], b["checkpoint_every"]
        return [i for i in range(1, n + 1) if i % every == 0 or i == n]

    # writing the prompt table and the report are seconds of work: on a cluster, on the submitting host
    localrules: cures_prompts, cures_report

    rule cures_prompts:
        output:
            prompts="results/rl_prompts/prompts.parquet",
        params:
            prompts=canon(CURES["prompts"]),
            seed=CURES["prompts"]["seed"],
        log:
            "logs/cures/prompts.log",
        script:
            script_path("cures_prompts")

    def cures_model_input():
        """The hf policy's model file or folder, an input so that changing the model reruns the chain."""
        if CURES["policy"]["kind"] != "hf":
            return {}
        from datasel.errors import ConfigError
        from datasel.models.locate import lm_source, locate_model

        pol = CURES["policy"]
        try:
            if pol.get("hf_path"):  # the older key: an error names it, not the model section the user left out
                return {"model": str(locate_model(pol["hf_path"], "cures.policy.hf_path"))}
            return {"model": lm_source(pol["model"], "cures.policy.model")}
        except ConfigError as exc:
            fail(exc.problem, exc.field, exc.fix)

    rule cures_warmstart:
        input:
            prompts="results/rl_prompts/prompts.parquet",
            **cures_model_input(),
        output:
            ckpt="results/rl/warmstart/seed{seed}.pt",
            history="results/rl/warmstart/seed{seed}.json",
        params:
            policy=canon({**CURES["policy"], "device": CURES["device"]}),
            warmstart=canon(CURES["warmstart"]),
        wildcard_constraints:
            seed=r"\d+",
        threads: THREADS
        resources:
            **job_resources("cures_warmstart", gpu=True),
        log:
            "logs/cures/warmstart/seed{seed}.log",
        benchmark:
            "logs/benchmarks/cures/warmstart/seed{seed}.tsv"
        script:
            script_path("cures_warmstart")

    rule cures_train:
        input:
            prompts="results/rl_prompts/prompts.parquet",
            ckpt="results/rl/warmstart/seed{seed}.pt",
        output:
            metrics="results/metrics/cures/{run}__seed{seed}.parquet",
            prompt_stats="results/prompt_stats/{run}__seed{seed}.parquet",
            iterations=expand("results/rl/{{run}}/seed{{seed}}/iter{i}.pt", i=cures_iterations()),
        params:
            run=lambda wc: canon(CURES["runs"][wc.run]),
            budget=canon(CURES["budget"]),
            grpo=canon(CURES["grpo"]),
            eval=canon(CURES["eval"]),
            policy={"device": CURES["device"]},
        wildcard_constraints:
            run=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
            seed=r"\d+",
        threads: THREADS
        resources:
            **job_resources("cures_train", gpu=True),
        log:
            "logs/cures/train/{run}__seed{seed}.log",
        benchmark:
            "logs/benchmarks/cures/train/{run}__seed{seed}.tsv"
        script:
            script_path("cures_train")

    def cures_tables(kind):
        folder = {"metrics": "metrics/cures", "prompt_stats": "prompt_stats"}[kind]
        return expand(f"results/{folder}/{{run}}__seed{{seed}}.parquet", run=CURES["runs"], seed=CURES["seeds"])

    rule cures_report:
        input:
            metrics=cures_tables("metrics"),
            prompt_stats=cures_tables("prompt_stats"),
        output:
            accuracy=report("results/plots/cures_accuracy.png", category="CurES"),
            difficulty=report("results/plots/cures_difficulty.png", category="CurES"),
            summary="results/rl/summary.json",
        log:
            "logs/cures/report.log",
        script:
            script_path("cures_report")

    register_targets("cures", lambda: [*cures_tables("metrics"), *cures_tables("prompt_stats"),
                                       *rules.cures_report.output])
