from datasel.rl.loop import train_step
from datasel.snakemake_entry import run_step

run_step(snakemake, lambda s: train_step(  # noqa: F821 (injected by Snakemake)
    s.input.prompts, s.input.ckpt, s.wildcards.run, int(s.wildcards.seed),
    run_cfg=s.params.run, budget=s.params.budget, grpo=s.params.grpo, evaluation=s.params.eval,
    device=s.params.policy["device"], metrics=s.output.metrics, prompt_stats=s.output.prompt_stats,
    iterations=list(s.output.iterations)))
