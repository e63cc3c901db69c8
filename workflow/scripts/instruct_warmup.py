from datasel.instruct.steps import warmup
from datasel.snakemake_entry import run_step

run_step(snakemake, warmup)  # noqa: F821 (injected by Snakemake)
