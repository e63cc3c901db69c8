from datasel.features.steps import features_shard
from datasel.snakemake_entry import compute_device, run_step


def step(s) -> None:
    features_shard(s.input.examples, s.input.meta, s.output[0], name=s.wildcards.fset, fset=s.params.fset,
                   shards=int(s.params.shards), shard=int(s.wildcards.shard), split=s.wildcards.split,
                   ckpt=s.wildcards.ckpt, checkpoint=s.input.get("checkpoint"), proxy=s.params.proxy,
                   device=compute_device(s))


run_step(snakemake, step)  # noqa: F821 (injected by Snakemake)
