# Instruction-data selection for a causal LM, the LESS chain (datasel/instruct/steps.py documents the layout):
#   [generate] -> [base_model] -> prepare -> warm-up (checkpoint per epoch, optimizer state) -> LoRA gradient
#   features per checkpoint (pool Adam-preconditioned, target plain; sharded feature store) -> LESS score ->
#   selections (datasel.selection policies) -> LoRA fine-tuning per selection x seeds -> test metrics -> report,
#   and the selected rows exported in their original columns.


if "instruct" in config:
    INS = config["instruct"]
    IR = "results/instruct"
    INS_SEL_FRACTION = INS["selection"]["fraction"]
    # the torch steps ask a cluster for a GPU unless instruct.device (or compute.device, in job_resources) is cpu
    INS_GPU = INS["device"] != "cpu"

    # seconds of work (merging shard indexes, a top-k, the report, copying rows; writing the generated files): on a
    # cluster, on the submitting host
    localrules: instruct_features_gather, instruct_select, instruct_report, instruct_export

    def ins_model_dir():
        if INS["model"].get("tiny") is not None:
            return f"{IR}/base_model"
        from datasel.errors import ConfigError
        from datasel.models.locate import lm_source

        try:  # a folder or a .gguf file; a hub name becomes its folder in the local cache; default: packaged SmolLM2
            spec = {k: INS["model"][k] for k in ("source", "path", "gguf_file") if INS["model"].get(k)}
            return lm_source(spec, "instruct.model")
        except ConfigError as exc:
            fail(exc.problem, exc.field, exc.fix)

    def ins_fraction(name):
        return 1.0 if INS["selection"]["policies"][name]["policy"] == "full" else INS_SEL_FRACTION

    def ins_selection(name):
        return f"{name}_keep{round(ins_fraction(name) * 100)}"

    def ins_selections():
        return [ins_selection(n) for n in INS["selection"]["policies"]]

    def ins_params(*sections):
        """The slices of the instruct section one rule reads (a change elsewhere does not rerun it)."""
        out = {"device": INS["device"], "model": INS["model"], "data": {"max_length": INS["data"]["max_length"]}}
        return canon(out | {s: INS[s] for s in sections})

    INS_EPOCHS = list(range(1, INS["warmup"]["epochs"] + 1))
    INS_DATA = {role: INS["data"][role] for role in ("pool", "target", "test")}

    if INS["data"].get("generate") is not None:
        from datasel.errors import ConfigError
        from datasel.instruct.families import check_replaceable

        try:  # the rule would delete and regenerate the user's own files when one is missing: refuse now
            check_replaceable(INS_DATA)
        except ConfigError as exc:
            fail(exc.problem, exc.field, exc.fix)

        localrules: instruct_generate

        rule instruct_generate:
            output:
                **INS_DATA,
            params:
                generate=canon(INS["data"]["generate"]),
            log:
                "logs/instruct/generate.log",
            script:
                script_path("instruct_generate")

    if INS["model"].get("tiny") is not None:

        rule instruct_model:
            input:
                pool=INS_DATA["pool"],
                target=INS_DATA["target"],
            output:
                directory(f"{IR}/base_model"),
            params:
                instruct=ins_params("data"),
            threads: THREADS
            resources:
                **job_resources("instruct_model"),
            log:
                "logs/instruct/model.log",
            script:
                script_path("instruct_model")

    rule instruct_prepare:
        input:
            **INS_DATA,
            model=ins_model_dir(),
        output:
            examples=f"{IR}/examples.parquet",
            truncation=f"{IR}/truncation.json",
            sources=expand(f"{IR}/source_{{role}}.parquet", role=INS_DATA),
        params:
            instruct=ins_params("data"),
            model_dir=ins_model_dir(),
        threads: THREADS
        resources:
            **job_resources("instruct_prepare"),
        log:
            "logs/instruct/prepare.log",
        script:
            script_path("instruct_prepare")

    rule instruct_warmup:
        input:
            examples=f"{IR}/examples.parquet",
            model=ins_model_dir(),
        output:
            sample=f"{IR}/warmup/sample.parquet",
            checkpoints=expand(f"{IR}/warmup/epoch{{e}}.pt", e=INS_EPOCHS),
        params:
            instruct=ins_params("warmup"),
            model_dir=ins_model_dir(),
        threads: THREADS
        resources:
            **job_resources("instruct_warmup", gpu=INS_GPU),
        log:
            "logs/instruct/warmup.log",
        benchmark:
            "logs/benchmarks/instruct/warmup.tsv"
        script:
            script_path("instruct_warmup")

    rule instruct_features_shard:
        input:
            examples=f"{IR}/examples.parquet",
            checkpoint=f"{IR}/warmup/epoch{{epoch}}.pt",
            model=ins_model_dir(),
        output:
            directory(f"{IR}/features/epoch{{epoch}}-{{split}}/shard_{{shard}}"),
        params:
            instruct=ins_params("features"),
            model_dir=ins_model_dir(),
        wildcard_constraints:
            epoch=r"\d+",
            split=r"train|val",
            shard=r"\d+",
        threads: THREADS
        resources:
            **job_resources("instruct_features_shard", gpu=INS_GPU),
        log:
            f"logs/instruct/features/epoch{{epoch}}-{{split}}/shard_{{shard}}.log",
        benchmark:
            f"logs/benchmarks/instruct/features/epoch{{epoch}}-{{split}}/shard_{{shard}}.tsv"
        script:
            script_path("instruct_features_shard")

    rule instruct_features_gather:
        input:
            shards=lambda wc: expand(f"{IR}/features/epoch{wc.epoch}-{wc.split}/shard_{{i}}",
                                     i=range(INS["features"]["shards"])),
        output:
            f"{IR}/features/epoch{{epoch}}-{{split}}/index.json",
        wildcard_constraints:
            epoch=r"\d+",
            split=r"train|val",
        log:
            f"logs/instruct/features/epoch{{epoch}}-{{split}}/gather.log",
        script:
            script_path("instruct_features_gather")

    rule instruct_score:
        input:
            examples=f"{IR}/examples.parquet",
            features=expand(f"{IR}/features/epoch{{e}}-{{s}}/index.json", e=INS_EPOCHS, s=["train", "val"]),
        output:
            f"{IR}/scores/less.parquet",
        params:
            instruct=canon({"score": INS["score"]}),
        threads: THREADS
        resources:
            **job_resources("instruct_score"),
        log:
            "logs/instruct/score.log",
        script:
            script_path("instruct_score")

    def _ins_select_inputs(wc):
        inputs = {"examples": f"{IR}/examples.parquet"}
        if INS["selection"]["policies"][wc.policy].get("score"):
            inputs["scores"] = f"{IR}/scores/less.parquet"
        return inputs

    rule instruct_select:
        input:
            unpack(_ins_select_inputs),
        output:
            f"{IR}/selections/{{policy}}_keep{{pct}}.parquet",
        params:
            policy=lambda wc: canon(INS["selection"]["policies"][wc.policy]),
            fraction=lambda wc: ins_fraction(wc.policy),
            seed=INS["selection"]["seed"],
        wildcard_constraints:
            policy="|".join(INS["selection"]["policies"]) or "none",
            pct=r"\d+",
        log:
            "logs/instruct/select/{policy}_keep{pct}.log",
        script:
            script_path("instruct_select")

    rule instruct_finetune:
        input:
            examples=f"{IR}/examples.parquet",
            selection=f"{IR}/selections/{{selection}}.parquet",
            model=ins_model_dir(),
        output:
            f"{IR}/metrics/{{selection}}.parquet",
        params:
            instruct=ins_params("finetune", "eval"),
            model_dir=ins_model_dir(),
        threads: THREADS
        resources:
            **job_resources("instruct_finetune", gpu=INS_GPU),
        log:
            "logs/instruct/finetune/{selection}.log",
        benchmark:
            "logs/benchmarks/instruct/finetune/{selection}.tsv"
        script:
            script_path("instruct_finetune")

    rule instruct_report:
        input:
            examples=f"{IR}/examples.parquet",
            truncation=f"{IR}/truncation.json",
            selections=[f"{IR}/selections/{s}.parquet" for s in ins_selections()],
            metrics=[f"{IR}/metrics/{s}.parquet" for s in ins_selections()],
        output:
            md=report(f"{IR}/report/summary.md", category="Instruction data"),
            csv=f"{IR}/report/summary.csv",
        log:
            "logs/instruct/report.log",
        script:
            script_path("instruct_report")

    def ins_exports():
        names = INS["export"].get("selections") or [n for n, e in INS["selection"]["policies"].items()
                                                     if e.get("score")]
        for n in names:
            if n not in INS["selection"]["policies"]:
                fail(f"names policy '{n}', which does not exist", "instruct.export.selections",
                     f"use some of: {', '.join(INS['selection']['policies'])}")
        return [f"{IR}/export/{ins_selection(n)}" for n in names]

    rule instruct_export:
        input:
            examples=f"{IR}/examples.parquet",
            selection=f"{IR}/selections/{{selection}}.parquet",
            source=f"{IR}/source_pool.parquet",
        output:
            directory(f"{IR}/export/{{selection}}"),
        params:
            format=INS["export"]["format"],
        log:
            "logs/instruct/export/{selection}.log",
        script:
            script_path("instruct_export")

    if stage_on("instruct"):
        register_targets("instruct", lambda: [*rules.instruct_report.output, *ins_exports()])
