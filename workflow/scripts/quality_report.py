from datasel.report.quality import quality_report
from datasel.snakemake_entry import run_step

run_step(snakemake, quality_report)  # noqa: F821 (injected by Snakemake)
