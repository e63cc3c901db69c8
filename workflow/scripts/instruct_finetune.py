from datasel.snakemake_entry import run_step; from datasel.instruct.steps import finetune  # noqa: E702
run_step(snakemake, finetune)  # noqa: F821 (injected by Snakemake)
