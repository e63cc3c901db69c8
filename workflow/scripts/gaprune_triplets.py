from datasel.pruning.pipeline import step_triplets
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: step_triplets(dict(s.params.cfg), s.output.triplets))  # noqa: F821 (injected by Snakemake)
