from datasel.mixing.steps import plots_step
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: plots_step(list(s.input.weights), list(s.input.curves), s.output.weights, s.output.loss),
)
