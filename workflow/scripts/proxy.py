from datasel.snakemake_entry import compute_device, run_step
from datasel.training.proxy import run_proxy

run_step(snakemake, lambda s: run_proxy(  # noqa: F821 (injected by Snakemake)
    s.input.examples, s.input.meta, list(s.output), s.params.proxy, int(s.wildcards.seed), device=compute_device(s)))
