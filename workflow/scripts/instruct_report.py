from datasel.instruct.steps import report
from datasel.snakemake_entry import run_step

run_step(snakemake, report)  # noqa: F821 (injected by Snakemake)
