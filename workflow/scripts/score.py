from datasel.pipeline import score
from datasel.snakemake_entry import run_step

run_step(snakemake, score, preload=("torch",))  # noqa: F821 (injected by Snakemake)
