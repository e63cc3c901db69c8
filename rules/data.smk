# Data preparation: source -> validated examples table with stable ids, splits and (when asked) injected label noise.


def data_files(root="results"):
    """The user's data files (or a dataset folder's files): inputs of prepare, so editing them reruns it."""
    try:
        return data_inputs(run_cfg(root)["data"], CONFIG_SOURCE.file_of(("data", "path")))
    except DataselError as exc:
        raise WorkflowError(str(exc)) from None


data_files()  # a missing path is refused now, in `snakemake -n`, not when the prepare job starts


rule prepare:
    input:
        data=lambda wc: data_files(wc.root),
    output:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
    params:
        data=lambda wc: run_cfg(wc.root)["data"],
    wildcard_constraints:
        root=ROOT_RE,
    threads: THREADS
    resources:
        **job_resources("prepare"),
    log:
        "logs/{root}/prepare.log",
    benchmark:
        "logs/benchmarks/{root}/prepare.tsv"
    script:
        script_path("prepare")
