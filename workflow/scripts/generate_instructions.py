from datasel.instruct.families import write
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: write(s.params.generate, {r: s.output[r] for r in ("pool", "target", "test")}))  # noqa: F821
