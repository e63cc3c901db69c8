from datasel.report.cures_plots import report_step
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: report_step(  # noqa: F821 (injected by Snakemake)
    s.input.metrics, s.input.prompt_stats, accuracy=s.output.accuracy, difficulty=s.output.difficulty,
    summary=s.output.summary))
