from datasel.pruning.pipeline import step_run
from datasel.snakemake_entry import run_step

run_step(snakemake, step_run)  # noqa: F821 (injected by Snakemake)
