# Proxy runs: K models (seeds differ in init and data order), checkpointed at proxy.checkpoints epochs.


rule proxy:
    input:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
    output:
        expand("{{root}}/proxy/seed{{seed}}/epoch{epoch}.pt", epoch=sorted(set(config["proxy"]["checkpoints"])))
        # per-example, per-epoch correctness and margin (forgetting events, AUM)
        + ["{root}/proxy/seed{seed}/epochs.parquet"],
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
