from datasel.instruct.model import build_tiny_lm
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: build_tiny_lm(s.params.data, s.params.tiny, s.output[0]))  # noqa: F821 (injected)
