from datasel.snakemake_entry import run_step; from datasel.instruct.steps import prepare  # noqa: E702
run_step(snakemake, prepare)  # noqa: F821 (injected by Snakemake)
