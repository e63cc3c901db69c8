from datasel.features.steps import features_shard
from datasel.snakemake_entry import run_step

run_step(snakemake, features_shard)  # noqa: F821 (injected by Snakemake)
