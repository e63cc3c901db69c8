from datasel.snakemake_entry import run_step
from datasel.rl.loop import prompts_step

run_step(snakemake, prompts_step)  # noqa: F821 (injected by Snakemake)
