from datasel.instruct.steps import export
from datasel.snakemake_entry import run_step

run_step(snakemake, export)  # noqa: F821 (injected by Snakemake)
