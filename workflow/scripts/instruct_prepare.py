from datasel.instruct.steps import prepare
from datasel.snakemake_entry import run_step

run_step(snakemake, prepare)  # noqa: F821 (injected by Snakemake)
