from datasel.instruct.steps import finetune
from datasel.snakemake_entry import run_step

run_step(snakemake, finetune)  # noqa: F821 (injected by Snakemake)
