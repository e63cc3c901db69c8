from datasel.pruning.pipeline import step_triplets
from datasel.snakemake_entry import run_step

run_step(snakemake, step_triplets)  # noqa: F821 (injected by Snakemake)
