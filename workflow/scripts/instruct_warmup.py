from datasel.snakemake_entry import run_step; from datasel.instruct.steps import warmup  # noqa: E702
run_step(snakemake, warmup)  # noqa: F821 (injected by Snakemake)
