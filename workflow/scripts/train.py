from datasel.pipeline import train
from datasel.snakemake_entry import run_step

run_step(snakemake, train)  # noqa: F821 (injected by Snakemake)
