# DGA (METHODS.md §2): online data mixing by Dynamic Gradient Alignment, with the uniform, natural, specific-only and
# importance-sampling mixtures trained in the same workflow; domain_weights / metrics / scores tables, plots, models.

if stage_on("dga"):
    DGA = config["dga"]
    DGA_STRATEGIES = DGA["strategies"]
    # What a training run depends on (not the plot/alignment/seed lists), so editing those reruns nothing here.
    DGA_TRAIN_CFG = {k: v for k, v in DGA.items() if k not in ("data", "alignment", "strategies", "seeds")}
    DGA_TRAIN_CFG["device"] = config.get("compute", {}).get("device", "auto")
    if (
        DGA["data"]["source"] == "examples"
        and not any(k in DGA["task"] for k in ("specific", "specific_split"))
        and "specific" not in DGA["data"]
    ):
        fail(
            "the pipeline's examples table needs the specific set named",
            "dga.task.specific",
            "set dga.task.specific to the domain-column value of the specific rows, or dga.task.specific_split",
        )

    if DGA["data"]["source"] == "installed_text" and DGA["model"].get("name") != "causal_lm":
        fail(
            "installed_text cuts the text in a language model's tokens, and dga.model is not one",
            "dga.model.name",
            "use model: {name: causal_lm, source: smollm2} (or stdlib_text for a character-level model)",
        )

    rule dga_data:
        input:
            unpack(lambda wc: support.dga_data_inputs(DGA)),
        output:
            examples="results/examples/dga_domains.parquet",
            meta="results/examples/dga_domains.meta.json",
        log:
            "logs/dga/data.log",
        threads: THREADS
        resources:
            **job_resources("dga_data"),
        params:
            data=canon(support.dga_data_params(DGA)),
        script:
            script_path("dga_data")

    rule dga_train:
        input:
            examples=rules.dga_data.output.examples,
            meta=rules.dga_data.output.meta,
        output:
            model="results/dga/models/{strategy}_seed{seed}.pt",
            weights="results/domain_weights/dga_{strategy}_seed{seed}.parquet",
            metrics="results/metrics/dga/{strategy}/seed{seed}.parquet",
            curve="results/dga/curves/{strategy}_seed{seed}.json",
        log:
            "logs/dga/train_{strategy}_seed{seed}.log",
        benchmark:
            "logs/benchmarks/dga/train_{strategy}_seed{seed}.tsv"
        wildcard_constraints:
            strategy="|".join(DGA_STRATEGIES),
            seed=r"\d+",
        threads: THREADS
        resources:
            **job_resources("dga_train", gpu=True),
        params:
            # the importance-sampling options reach only that strategy's runs
            cfg=lambda wc: without(DGA_TRAIN_CFG, *(() if wc.strategy == "importance" else ("importance",))),
        script:
            script_path("dga_train")

    rule dga_alignment:
        input:
            examples=rules.dga_data.output.examples,
            meta=rules.dga_data.output.meta,
            model=f"results/dga/models/dga_seed{DGA['seeds'][0]}.pt",
        output:
            scores="results/scores/dga_alignment.parquet",
        log:
            "logs/dga/alignment.log",
        threads: THREADS
        resources:
            **job_resources("dga_alignment", gpu=True),
        params:
            cfg=canon({**DGA_TRAIN_CFG, "alignment": DGA["alignment"]}),
        script:
            script_path("dga_alignment")

    ruleorder: dga_alignment > score

    # plots from finished trajectories: on a cluster, on the submitting host
    localrules:
        dga_plots,

    rule dga_plots:
        input:
            weights=expand(
                "results/domain_weights/dga_{s}_seed{seed}.parquet",
                s=[s for s in DGA_STRATEGIES if s in ("dga", "importance")] or DGA_STRATEGIES[:1],
                seed=DGA["seeds"][0],
            ),
            curves=expand("results/dga/curves/{s}_seed{seed}.json", s=DGA_STRATEGIES, seed=DGA["seeds"]),
        output:
            weights=report(
                "results/plots/dga_weights.png", category="DGA", caption="../workflow/report/dga_weights.rst"
            ),
            loss=report("results/plots/dga_loss.png", category="DGA", caption="../workflow/report/dga_loss.rst"),
        log:
            "logs/dga/plots.log",
        script:
            script_path("dga_plots")

    register_targets("dga", lambda: support.dga_tables(DGA) + [*rules.dga_plots.output])
    if support.dga_alignment_on(DGA):
        register_score_table("dga_alignment")  # selection policies may rank by it (score: dga_alignment)
