from datasel.pruning.pipeline import step_gather
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: step_gather(dict(s.params.cfg), list(s.input.metrics), list(s.input.run_dirs), s.input.stats,
                          s.output.metrics, s.output.param_scores, s.output.plot),
)
