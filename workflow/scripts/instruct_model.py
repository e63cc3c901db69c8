from datasel.instruct.steps import build_model
from datasel.snakemake_entry import run_step

run_step(snakemake, build_model)  # noqa: F821 (injected by Snakemake)
