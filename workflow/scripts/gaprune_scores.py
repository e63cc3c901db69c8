from datasel.pruning.pipeline import step_example_scores
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: step_example_scores(dict(s.params.cfg), s.input.triplets, s.input.stats, s.output.scores),
)
