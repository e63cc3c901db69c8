from datasel.pipeline import catalog
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: catalog(s.output[0]))  # noqa: F821 (injected by Snakemake)
