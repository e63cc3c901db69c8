# Data preparation: source -> validated examples table with stable ids, splits and injected label noise.


rule prepare:
    output:
        examples="results/examples/examples.parquet",
        meta="results/examples/meta.json",
    params:
        data=config["data"],
    log:
        "logs/prepare.log",
    benchmark:
        "logs/benchmarks/prepare.tsv"
    script:
        script_path("prepare")
