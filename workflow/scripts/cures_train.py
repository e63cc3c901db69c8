from datasel.snakemake_entry import run_step
from datasel.rl.loop import train_step

run_step(snakemake, train_step)  # noqa: F821 (injected by Snakemake)
