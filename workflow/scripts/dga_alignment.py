from datasel.mixing.steps import alignment_step
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: alignment_step(dict(s.params.cfg), s.input.examples, s.input.meta, s.input.model, s.output.scores),
)
