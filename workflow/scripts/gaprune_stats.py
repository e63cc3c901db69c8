from datasel.pruning.pipeline import step_stats
from datasel.snakemake_entry import run_step

run_step(snakemake, step_stats)  # noqa: F821 (injected by Snakemake)
