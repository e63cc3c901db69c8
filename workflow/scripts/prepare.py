from datasel.pipeline import prepare
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: prepare(s.params.data, s.output.examples, s.output.meta,  # noqa: F821 (injected)
                                      lm=s.input.get("model")))
