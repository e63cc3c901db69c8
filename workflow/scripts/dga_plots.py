from datasel.mixing.steps import plots_step
from datasel.snakemake_entry import run_step

run_step(snakemake, plots_step)  # noqa: F821 (injected by Snakemake)
