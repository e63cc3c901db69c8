from datasel.mixing.steps import train_step
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: train_step(dict(s.params.cfg), s.wildcards.strategy, int(s.wildcards.seed), s.input.examples,
                         s.input.meta, s.output.model, s.output.weights, s.output.metrics, s.output.curve),
)
