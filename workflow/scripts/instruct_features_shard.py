from datasel.snakemake_entry import run_step; from datasel.instruct.steps import features_shard  # noqa: E702
run_step(snakemake, features_shard)  # noqa: F821 (injected by Snakemake)
