from datasel.rl.loop import prompts_step
from datasel.snakemake_entry import run_step

run_step(snakemake, prompts_step)  # noqa: F821 (injected by Snakemake)
