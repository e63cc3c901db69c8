from datasel.instruct.steps import score
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: score(s.params.instruct["score"], examples=s.input.examples,  # noqa: F821
                                   features=list(s.input.features), out=s.output[0]))
