from datasel.pruning.pipeline import step_stats
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: step_stats(dict(s.params.cfg), s.input.triplets, s.output.stats))  # noqa: F821
