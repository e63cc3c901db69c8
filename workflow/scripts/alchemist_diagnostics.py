from datasel.meta.diagnostics import run_diagnostics
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: run_diagnostics(  # noqa: F821 (injected by Snakemake)
    s.input.examples, s.input.scores, s.params.alchemist, policy=s.params.policy, metrics=s.output.metrics,
    plot=s.output.plot))
