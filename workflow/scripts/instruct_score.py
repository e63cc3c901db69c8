from datasel.instruct.steps import score
from datasel.snakemake_entry import run_step

run_step(snakemake, score)  # noqa: F821 (injected by Snakemake)
