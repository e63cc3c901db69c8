# Training: the target model on every selection (and the full-data baseline) for every seed, same budget.


# One job per selection trains every seed in one process (datasel.snakemake_entry.over_outputs): a job's process
# start and imports cost seconds, more than a small target model's training, and were paid once per seed.
# The quality grid's runs have their own seeds, so they get the same rule with their outputs (train_quality).
rule train:
    input:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
        selection="{root}/selections/{selection}.parquet",
    output:
        train_seed_outputs(config["training"]["seeds"]),
        train_curve_outputs(config["training"]["seeds"]),
    log:
        "logs/{root}/train/{selection}.log",
    benchmark:
        "logs/benchmarks/{root}/train/{selection}.tsv"
    wildcard_constraints:
        root="results",
    group:
        "select_train"
    threads: THREADS
    resources:
        **job_resources("train", gpu=True),
    params:
        training=lambda wc: canon(run_cfg(wc.root)["training"]),
        seeds=lambda wc: run_cfg(wc.root)["training"]["seeds"],
        curriculum=lambda wc: canon(policy_entry(selection_info(wc.selection)["method"], wc.root).get("curriculum")),
        info=lambda wc: selection_info(wc.selection),
    script:
        script_path("train")


if "quality" in config:

    use rule train as train_quality with:
        output:
            train_seed_outputs(config["quality"]["seeds"]),
            train_curve_outputs(config["quality"]["seeds"]),
        wildcard_constraints:
            root=r"results/quality/noise\d+",
