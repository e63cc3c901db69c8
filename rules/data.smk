# Data preparation: source -> validated examples table with stable ids, splits and (when asked) injected label noise.
from datasel.store.fingerprint import data_fingerprint


def data_files(root="results"):
    """The user's data files (or a dataset folder's files): inputs of prepare, so a missing one is refused."""
    try:
        return data_inputs(run_cfg(root)["data"], CONFIG_SOURCE.file_of(("data", "path")))
    except DataselError as exc:
        raise WorkflowError(str(exc)) from None


# a generator's own options (data.mnist1d, data.docstring_topics) matter only to the source that reads them
GENERATOR_SECTIONS = ("mnist1d", "docstring_topics")


def data_params(root):
    data = run_cfg(root)["data"]
    return without(data, *(s for s in GENERATOR_SECTIONS if s != data.get("source")))


data_files()  # a missing path is refused now, in `snakemake -n`, not when the prepare job starts


# Content, not mtime, decides whether the data changed: the files are `ancient` (a `touch` or a fresh checkout of
# the same bytes reruns nothing) and their fingerprint is a param, so Snakemake's params trigger reruns prepare,
# and so everything downstream, when any byte, file name or the set of files differs (datasel/store/fingerprint.py).
rule prepare:
    input:
        data=lambda wc: ancient(data_files(wc.root)),
    output:
        examples="{root}/examples/examples.parquet",
        meta="{root}/examples/meta.json",
    params:
        data=lambda wc: data_params(wc.root),
        data_sha256=lambda wc: data_fingerprint(data_files(wc.root)),
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
