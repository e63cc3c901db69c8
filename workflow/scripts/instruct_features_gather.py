from datasel.instruct.steps import features_gather
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: features_gather(list(s.input.shards), out=s.output[0],  # noqa: F821
                                             epoch=int(s.wildcards.epoch), split=s.wildcards.split))
