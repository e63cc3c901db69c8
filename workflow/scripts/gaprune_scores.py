from datasel.pruning.pipeline import step_example_scores
from datasel.snakemake_entry import run_step

run_step(snakemake, step_example_scores)  # noqa: F821 (injected by Snakemake)
