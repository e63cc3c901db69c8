# Data preparation: source -> validated examples table with stable ids, splits and injected label noise.


rule prepare:
    output:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
    params:
        data=lambda wc: run_cfg(wc.root)["data"],
    wildcard_constraints:
        root=ROOT_RE,
    log:
        "logs/{root}/prepare.log",
    benchmark:
        "logs/benchmarks/{root}/prepare.tsv"
    script:
        script_path("prepare")
