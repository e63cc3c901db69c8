from datasel.pipeline import train
from datasel.snakemake_entry import over_outputs, run_step

run_step(snakemake, over_outputs(train, "seed", "seeds"), preload=("torch",))  # noqa: F821 (injected by Snakemake)
