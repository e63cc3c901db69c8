from datasel.rl.loop import train_step
from datasel.snakemake_entry import run_step

run_step(snakemake, train_step)  # noqa: F821 (injected by Snakemake)
