# Data preparation: source -> validated examples table with stable ids, splits and (when asked) injected label noise.
from datasel.store.fingerprint import data_fingerprint

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
    log:
        "logs/{root}/prepare.log",
    benchmark:
        "logs/benchmarks/{root}/prepare.tsv"
    wildcard_constraints:
        root=ROOT_RE,
    threads: THREADS
    resources:
        **job_resources("prepare"),
    params:
        data=lambda wc: data_params(wc.root),
        data_sha256=lambda wc: data_fingerprint(data_files(wc.root)),
    script:
        script_path("prepare")
