from datasel.snakemake_entry import run_step; from datasel.instruct.steps import generate_data  # noqa: E702
run_step(snakemake, generate_data)  # noqa: F821 (injected by Snakemake)
