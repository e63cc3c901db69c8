# Instruction-data selection for a causal LM, the LESS chain (datasel/instruct/steps.py documents the layout):
#   [generate] -> [base_model] -> prepare -> warm-up (checkpoint per epoch, optimizer state) -> LoRA gradient
#   features per checkpoint (pool Adam-preconditioned, target plain; sharded feature store) -> LESS score ->
#   selections (datasel.selection policies) -> LoRA fine-tuning per selection x seeds -> test metrics -> report,
#   and the selected rows exported in their original columns.


if "instruct" in config:
    INS = config["instruct"]
    IR = support.INSTRUCT_DIR
    # the torch steps ask a cluster for a GPU unless instruct.device (or compute.device, in job_resources) is cpu
    INS_GPU = INS["device"] != "cpu"

    # seconds of work (merging shard indexes, a top-k, the report, copying rows; writing the generated files): on a
    # cluster, on the submitting host
    localrules:
        instruct_features_gather,
        instruct_select,
        instruct_report,
        instruct_export,

    INS_MODEL = support.refusing(fail, support.ins_model_dir, INS)
    INS_EPOCHS = list(range(1, INS["warmup"]["epochs"] + 1))
    INS_DATA = {role: INS["data"][role] for role in ("pool", "target", "test")}
    if INS["data"].get("generate") is not None:
        from datasel.errors import ConfigError
        from datasel.instruct.families import check_replaceable

        try:  # the rule would delete and regenerate the user's own files when one is missing: refuse now
            check_replaceable(INS_DATA)
        except ConfigError as exc:
            fail(exc.problem, exc.field, exc.fix)

        localrules:
            instruct_generate,

        rule instruct_generate:
            output:
                **INS_DATA,
            log:
                "logs/instruct/generate.log",
            params:
                generate=canon(INS["data"]["generate"]),
            script:
                script_path("instruct_generate")

    if INS["model"].get("tiny") is not None:

        rule instruct_model:
            input:
                pool=INS_DATA["pool"],
                target=INS_DATA["target"],
            output:
                directory(f"{IR}/base_model"),
            log:
                "logs/instruct/model.log",
            threads: THREADS
            resources:
                **job_resources("instruct_model"),
            params:
                instruct=support.ins_params(INS, "data"),
            script:
                script_path("instruct_model")

    rule instruct_prepare:
        input:
            **INS_DATA,
            model=INS_MODEL,
        output:
            examples=f"{IR}/examples.parquet",
            truncation=f"{IR}/truncation.json",
            sources=expand(f"{IR}/source_{{role}}.parquet", role=INS_DATA),
        log:
            "logs/instruct/prepare.log",
        threads: THREADS
        resources:
            **job_resources("instruct_prepare"),
        params:
            instruct=support.ins_params(INS, "data"),
            model_dir=lambda wc, input: input.model,
        script:
            script_path("instruct_prepare")

    rule instruct_warmup:
        input:
            examples=f"{IR}/examples.parquet",
            model=INS_MODEL,
        output:
            sample=f"{IR}/warmup/sample.parquet",
            checkpoints=expand(f"{IR}/warmup/epoch{{e}}.pt", e=INS_EPOCHS),
        log:
            "logs/instruct/warmup.log",
        benchmark:
            "logs/benchmarks/instruct/warmup.tsv"
        threads: THREADS
        resources:
            **job_resources("instruct_warmup", gpu=INS_GPU),
        params:
            instruct=support.ins_params(INS, "warmup"),
            model_dir=lambda wc, input: input.model,
        script:
            script_path("instruct_warmup")

    rule instruct_features_shard:
        input:
            examples=f"{IR}/examples.parquet",
            checkpoint=f"{IR}/warmup/epoch{{epoch}}.pt",
            model=INS_MODEL,
        output:
            directory(f"{IR}/features/epoch{{epoch}}-{{split}}/shard_{{shard}}"),
        log:
            f"logs/instruct/features/epoch{{epoch}}-{{split}}/shard_{{shard}}.log",
        benchmark:
            f"logs/benchmarks/instruct/features/epoch{{epoch}}-{{split}}/shard_{{shard}}.tsv"
        wildcard_constraints:
            epoch=r"\d+",
            split=r"train|val",
            shard=r"\d+",
        threads: THREADS
        resources:
            **job_resources("instruct_features_shard", gpu=INS_GPU),
        params:
            instruct=support.ins_params(INS, "features"),
            model_dir=lambda wc, input: input.model,
        script:
            script_path("instruct_features_shard")

    rule instruct_features_gather:
        input:
            shards=lambda wc: expand(
                f"{IR}/features/epoch{wc.epoch}-{wc.split}/shard_{{i}}", i=range(INS["features"]["shards"])
            ),
        output:
            f"{IR}/features/epoch{{epoch}}-{{split}}/index.json",
        log:
            f"logs/instruct/features/epoch{{epoch}}-{{split}}/gather.log",
        wildcard_constraints:
            epoch=r"\d+",
            split=r"train|val",
        script:
            script_path("instruct_features_gather")

    rule instruct_score:
        input:
            examples=f"{IR}/examples.parquet",
            features=expand(f"{IR}/features/epoch{{e}}-{{s}}/index.json", e=INS_EPOCHS, s=["train", "val"]),
        output:
            f"{IR}/scores/less.parquet",
        log:
            "logs/instruct/score.log",
        threads: THREADS
        resources:
            **job_resources("instruct_score"),
        params:
            instruct=canon({"score": INS["score"]}),
        script:
            script_path("instruct_score")

    rule instruct_select:
        input:
            unpack(lambda wc: support.ins_select_inputs(INS, wc)),
        output:
            f"{IR}/selections/{{policy}}_keep{{pct}}.parquet",
        log:
            "logs/instruct/select/{policy}_keep{pct}.log",
        wildcard_constraints:
            policy="|".join(INS["selection"]["policies"]) or "none",
            pct=r"\d+",
        params:
            policy=lambda wc: canon(INS["selection"]["policies"][wc.policy]),
            fraction=lambda wc: support.ins_fraction(INS, wc.policy),
            seed=INS["selection"]["seed"],
        script:
            script_path("instruct_select")

    rule instruct_finetune:
        input:
            examples=f"{IR}/examples.parquet",
            selection=f"{IR}/selections/{{selection}}.parquet",
            model=INS_MODEL,
        output:
            f"{IR}/metrics/{{selection}}.parquet",
        log:
            "logs/instruct/finetune/{selection}.log",
        benchmark:
            "logs/benchmarks/instruct/finetune/{selection}.tsv"
        threads: THREADS
        resources:
            **job_resources("instruct_finetune", gpu=INS_GPU),
        params:
            instruct=support.ins_params(INS, "finetune", "eval"),
            model_dir=lambda wc, input: input.model,
        script:
            script_path("instruct_finetune")

    rule instruct_report:
        input:
            examples=f"{IR}/examples.parquet",
            truncation=f"{IR}/truncation.json",
            selections=[f"{IR}/selections/{s}.parquet" for s in support.ins_selections(INS)],
            metrics=[f"{IR}/metrics/{s}.parquet" for s in support.ins_selections(INS)],
        output:
            md=report(f"{IR}/report/summary.md", category="Instruction data"),
            csv=f"{IR}/report/summary.csv",
        log:
            "logs/instruct/report.log",
        script:
            script_path("instruct_report")

    rule instruct_export:
        input:
            examples=f"{IR}/examples.parquet",
            selection=f"{IR}/selections/{{selection}}.parquet",
            source=f"{IR}/source_pool.parquet",
        output:
            directory(f"{IR}/export/{{selection}}"),
        log:
            "logs/instruct/export/{selection}.log",
        params:
            format=INS["export"]["format"],
        script:
            script_path("instruct_export")

    if stage_on("instruct"):
        register_targets(
            "instruct", lambda: [*rules.instruct_report.output, *support.refusing(fail, support.ins_exports, INS)]
        )
