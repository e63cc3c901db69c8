# Proxy runs: K models (seeds differ in init and data order), checkpointed at proxy.checkpoints epochs.


rule proxy:
    input:
        examples="results/examples/examples.parquet",
        meta="results/examples/meta.json",
    output:
        expand("results/proxy/seed{{seed}}/epoch{epoch}.pt", epoch=sorted(set(config["proxy"]["checkpoints"]))),
    params:
        proxy=config["proxy"],
    wildcard_constraints:
        seed=r"\d+",
    resources:
        gpu=1,
    log:
        "logs/proxy/seed{seed}.log",
    benchmark:
        "logs/benchmarks/proxy/seed{seed}.tsv"
    script:
        script_path("proxy")
