from datasel.rl.loop import prompts_step
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: prompts_step(s.params.prompts, int(s.params.seed), out=s.output.prompts))  # noqa: F821 (injected by Snakemake)
