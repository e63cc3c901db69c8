from datasel.pipeline import select
from datasel.snakemake_entry import run_step


def step(s) -> None:
    select(s.wildcards.policy, s.params.policy, s.params.fraction, s.params.seed, s.input.examples, s.output[0],
           scores=s.input.get("scores"), order=s.input.get("order"), draws=s.params.get("draws"), meta=s.input.get("meta"))


run_step(snakemake, step)  # noqa: F821 (injected by Snakemake)
