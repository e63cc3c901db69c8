from datasel.snakemake_entry import run_step; from datasel.instruct.steps import features_gather  # noqa: E702
run_step(snakemake, features_gather)  # noqa: F821 (injected by Snakemake)
