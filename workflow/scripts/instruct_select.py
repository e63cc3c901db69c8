from datasel.instruct.steps import select
from datasel.snakemake_entry import run_step

run_step(snakemake, select)  # noqa: F821 (injected by Snakemake)
