from datasel.rl.loop import warmstart_step
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: warmstart_step(  # noqa: F821 (injected by Snakemake)
    s.input.prompts, s.params.policy, s.params.warmstart, int(s.wildcards.seed), ckpt=s.output.ckpt,
    history=s.output.history))
