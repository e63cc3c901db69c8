from datasel.instruct.steps import features_shard
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: features_shard(  # noqa: F821 (injected by Snakemake)
    s.params.instruct, s.params.model_dir, examples=s.input.examples, checkpoint=s.input.checkpoint, out=s.output[0],
    split=s.wildcards.split, shard=int(s.wildcards.shard)))
