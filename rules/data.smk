# Data preparation: source -> validated examples table with stable ids, splits and (when asked) injected label noise.
# Instruction data (data.source: instruct) is rendered and tokenized with the chain's causal LM, which is therefore
# an input of prepare; its files may be generated first (data.instruct.generate) and its LM may be a tiny model the
# workflow builds (model.tiny, for tests).
from datasel.store.fingerprint import data_fingerprint

data_files()  # a missing path is refused now, in `snakemake -n`, not when the prepare job starts


# Content, not mtime, decides whether the data changed: the files are `ancient` (a `touch` or a fresh checkout of
# the same bytes reruns nothing) and their fingerprint is a param, so Snakemake's params trigger reruns prepare,
# and so everything downstream, when any byte, file name or the set of files differs (datasel/store/fingerprint.py).
rule prepare:
    input:
        unpack(prepare_inputs),
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
        data_sha256=lambda wc: None if LM_DATA else data_fingerprint(data_files(wc.root)),
    script:
        script_path("prepare")


if LM_DATA:
    INS_FILES = {role: config["data"]["instruct"][role] for role in ("pool", "target", "test")}
    if config["data"]["instruct"].get("generate") is not None:
        from datasel.errors import ConfigError
        from datasel.instruct.families import check_replaceable

        try:  # the rule would delete and regenerate the user's own files when one is missing: refuse now
            check_replaceable(INS_FILES)
        except ConfigError as exc:
            fail(exc.problem, exc.field, exc.fix)

        # writes three small files: on a cluster, on the submitting host
        localrules:
            generate_instructions,

        rule generate_instructions:
            output:
                **INS_FILES,
            log:
                "logs/data/generate.log",
            params:
                generate=canon(config["data"]["instruct"]["generate"]),
            script:
                script_path("generate_instructions")

    if config["training"]["model"].get("tiny") is not None:

        rule tiny_lm:
            input:
                pool=INS_FILES["pool"],
                target=INS_FILES["target"],
            output:
                directory(support.TINY_LM_DIR),
            log:
                "logs/data/tiny_lm.log",
            threads: THREADS
            resources:
                **job_resources("tiny_lm"),
            params:
                data=canon(config["data"]["instruct"]),
                tiny=canon(config["training"]["model"]["tiny"]),
            script:
                script_path("tiny_lm")
