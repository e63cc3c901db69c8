from datasel.pruning.pipeline import step_gather
from datasel.snakemake_entry import run_step

run_step(snakemake, step_gather)  # noqa: F821 (injected by Snakemake)
