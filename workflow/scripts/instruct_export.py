from datasel.snakemake_entry import run_step; from datasel.instruct.steps import export  # noqa: E702
run_step(snakemake, export)  # noqa: F821 (injected by Snakemake)
