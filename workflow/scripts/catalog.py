from datasel.pipeline import catalog
from datasel.snakemake_entry import run_step

run_step(snakemake, catalog)  # noqa: F821 (injected by Snakemake)
