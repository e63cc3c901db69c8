from datasel.snakemake_entry import run_step; from datasel.instruct.steps import build_model  # noqa: E702
run_step(snakemake, build_model)  # noqa: F821 (injected by Snakemake)
