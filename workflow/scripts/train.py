from datasel.pipeline import train
from datasel.snakemake_entry import over_outputs, run_step

run_step(snakemake, over_outputs(train, "seed", "seeds"))  # noqa: F821 (injected by Snakemake)
