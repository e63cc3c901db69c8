from datasel.instruct.steps import finetune
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: finetune(s.params.instruct, s.params.model_dir, examples=s.input.examples,  # noqa: F821
                                      selection=s.input.selection, out=s.output[0], name=s.wildcards.selection))
