from datasel.instruct.steps import prepare
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: prepare(s.params.instruct, s.params.model_dir, examples=s.output.examples,  # noqa: F821
                                     truncation=s.output.truncation))
