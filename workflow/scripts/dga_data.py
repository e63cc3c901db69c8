from datasel.mixing.steps import data_step
from datasel.snakemake_entry import run_step

run_step(
    snakemake,  # noqa: F821 (injected by Snakemake)
    lambda s: data_step(dict(s.params.data), s.output.examples, s.output.meta, s.input.get("examples"),
                        s.input.get("meta")),
)
