from datasel.snakemake_entry import compute_device, run_step
from datasel.training.proxy import run_proxy

run_step(snakemake, lambda s: run_proxy(s.input.examples, s.input.meta, list(s.output), s.params.proxy,  # noqa: F821
                                        int(s.wildcards.seed), compute_device(s)))
