from datasel.instruct.steps import build_model
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: build_model(s.params.instruct, out=s.output[0]))  # noqa: F821 (injected by Snakemake)
