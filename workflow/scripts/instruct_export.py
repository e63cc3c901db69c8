from datasel.instruct.steps import export
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: export(s.input.examples, out=s.output[0], selection=s.wildcards.selection,  # noqa: F821
                                    fmt=s.params.format))
