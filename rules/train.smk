# Training: the target model on every selection (and the full-data baseline) for every seed, same budget.


def selection_info(selection):
    policy, pct = selection.rsplit("_keep", 1)
    return {"method": policy, "fraction": int(pct) / 100}


rule train:
    input:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
        selection="{root}/selections/{selection}.parquet",
    output:
        "{root}/metrics/train/{selection}/seed{seed}.parquet",
    params:
        training=lambda wc: run_cfg(wc.root)["training"],
        curriculum=lambda wc: policy_entry(selection_info(wc.selection)["method"], wc.root).get("curriculum"),
        info=lambda wc: selection_info(wc.selection),
    wildcard_constraints:
        root=ROOT_RE,
        seed=r"\d+",
    resources:
        gpu=1,
    log:
        "logs/{root}/train/{selection}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/{root}/train/{selection}/seed{seed}.tsv"
    script:
        script_path("train")


def train_metrics(root="results"):
    return expand("{root}/metrics/train/{selection}/seed{seed}.parquet", root=root, selection=selection_names(root),
                  seed=run_cfg(root)["training"]["seeds"])
