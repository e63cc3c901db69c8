from datasel.features.steps import features_gather
from datasel.snakemake_entry import run_step

run_step(snakemake, features_gather)  # noqa: F821 (injected by Snakemake)
