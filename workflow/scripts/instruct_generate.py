from datasel.instruct.steps import generate_data
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: generate_data(s.params.generate, pool=s.output.pool, target=s.output.target,  # noqa: F821
                                           test=s.output.test))
