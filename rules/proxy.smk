# Proxy runs: K models (seeds differ in init and data order), checkpointed at proxy.checkpoints epochs (on causal-LM
# data, LESS's LoRA warm-up on a random proxy.fraction of the pool, datasel/training/lm.py).


rule proxy:
    input:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
    output:
        expand("{{root}}/proxy/seed{{seed}}/epoch{epoch}.pt", epoch=sorted(set(config["proxy"]["checkpoints"])))
        # per-example, per-epoch correctness and margin (forgetting events, AUM); on causal-LM data, the pool rows
        # LESS's warm-up trained on
        + ["{root}/proxy/seed{seed}/" + ("sample.parquet" if support.lm_data(config) else "epochs.parquet")],
    log:
        "logs/{root}/proxy/seed{seed}.log",
    benchmark:
        "logs/benchmarks/{root}/proxy/seed{seed}.tsv"
    wildcard_constraints:
        root=ROOT_RE,
        seed=r"\d+",
    threads: THREADS
    resources:
        **job_resources("proxy", gpu=True),
    params:
        # one seed's run: the recipe, not how many seeds there are (adding a seed runs that seed only)
        proxy=without(config["proxy"], "seeds"),
    script:
        script_path("proxy")
