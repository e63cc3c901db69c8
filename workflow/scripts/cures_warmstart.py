from datasel.rl.loop import warmstart_step
from datasel.snakemake_entry import run_step

run_step(snakemake, warmstart_step)  # noqa: F821 (injected by Snakemake)
