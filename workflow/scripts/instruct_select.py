from datasel.snakemake_entry import run_step; from datasel.instruct.steps import select  # noqa: E702
run_step(snakemake, select)  # noqa: F821 (injected by Snakemake)
