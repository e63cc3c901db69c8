from datasel.meta.diagnostics import run_diagnostics
from datasel.snakemake_entry import run_step

run_step(snakemake, run_diagnostics)  # noqa: F821 (injected by Snakemake)
