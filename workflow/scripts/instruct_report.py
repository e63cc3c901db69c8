from datasel.snakemake_entry import run_step; from datasel.instruct.steps import report  # noqa: E702
run_step(snakemake, report)  # noqa: F821 (injected by Snakemake)
