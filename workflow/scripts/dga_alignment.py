from datasel.mixing.steps import alignment_step
from datasel.snakemake_entry import run_step

run_step(snakemake, alignment_step)  # noqa: F821 (injected by Snakemake)
