from datasel.features.steps import features_gather
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: features_gather(  # noqa: F821 (injected by Snakemake)
    s.input.shards, s.output[0], name=s.wildcards.fset, ckpt=s.wildcards.ckpt, split=s.wildcards.split))
