from datasel.snakemake_entry import run_step; from datasel.instruct.steps import score  # noqa: E702
run_step(snakemake, score)  # noqa: F821 (injected by Snakemake)
