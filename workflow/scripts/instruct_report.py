from datasel.instruct.steps import report
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: report(s.input.examples, s.input.truncation, selections=list(s.input.selections),  # noqa: F821
                                    metrics=list(s.input.metrics), md=s.output.md, csv=s.output.csv))
