from datasel.instruct.steps import warmup
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: warmup(s.params.instruct, s.params.model_dir, examples=s.input.examples,  # noqa: F821
                                    sample=s.output.sample, checkpoints=list(s.output.checkpoints)))
