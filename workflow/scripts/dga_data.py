from datasel.mixing.steps import data_step
from datasel.snakemake_entry import run_step

run_step(snakemake, data_step)  # noqa: F821 (injected by Snakemake)
