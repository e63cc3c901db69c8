from datasel.snakemake_entry import run_step
from datasel.rl.loop import warmstart_step

run_step(snakemake, warmstart_step)  # noqa: F821 (injected by Snakemake)
