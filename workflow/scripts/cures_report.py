from datasel.report.cures_plots import report_step
from datasel.snakemake_entry import run_step

run_step(snakemake, report_step)  # noqa: F821 (injected by Snakemake)
