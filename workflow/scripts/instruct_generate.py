from datasel.instruct.steps import generate_data
from datasel.snakemake_entry import run_step

run_step(snakemake, generate_data)  # noqa: F821 (injected by Snakemake)
