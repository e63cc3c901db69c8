# Training: the target model on every selection (and the full-data baseline) for every seed, same budget.


def selection_info(selection):
    policy, pct = selection.rsplit("_keep", 1)
    return {"method": policy, "fraction": int(pct) / 100}


rule train:
    input:
        examples="results/examples/examples.parquet",
        meta="results/examples/meta.json",
        selection="results/selections/{selection}.parquet",
    output:
        "results/metrics/train/{selection}/seed{seed}.parquet",
    params:
        training=config["training"],
        curriculum=lambda wc: policy_entry(selection_info(wc.selection)["method"]).get("curriculum"),
        info=lambda wc: selection_info(wc.selection),
    wildcard_constraints:
        seed=r"\d+",
    resources:
        gpu=1,
    log:
        "logs/train/{selection}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{selection}/seed{seed}.tsv"
    script:
        script_path("train")


def train_metrics():
    return expand("results/metrics/train/{selection}/seed{seed}.parquet", selection=selection_names(),
                  seed=config["training"]["seeds"])
