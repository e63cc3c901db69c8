from datasel.pruning.pipeline import step_run
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: step_run(dict(s.params.cfg), s.input.triplets, s.input.stats, s.wildcards.method, int(s.wildcards.pct),
                       s.output.metrics, s.output.run_dir),
)
