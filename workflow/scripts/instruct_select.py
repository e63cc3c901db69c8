from datasel.instruct.steps import select
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: select(s.input.examples, s.input.get("scores"), out=s.output[0],  # noqa: F821
                                    name=s.wildcards.policy, policy=s.params.policy,
                                    fraction=float(s.params.fraction), seed=int(s.params.seed)))
