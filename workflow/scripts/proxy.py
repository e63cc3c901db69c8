from datasel.snakemake_entry import run_step
from datasel.training.proxy import run_proxy

run_step(snakemake, run_proxy)  # noqa: F821 (injected by Snakemake)
