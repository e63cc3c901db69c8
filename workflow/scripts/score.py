from datasel.pipeline import score
from datasel.snakemake_entry import compute_device, run_step


def step(s) -> None:
    score(s.wildcards.method, s.params.scoring, s.input.examples, s.input.meta, s.output[0],
          checkpoints=s.input.get("checkpoints", []), features=s.input.get("features", []),
          epoch_tables=s.input.get("epoch_tables", []), model_cfg=s.params.model_cfg, proxy=s.params.get("proxy"),
          device=compute_device(s))


run_step(snakemake, step, preload=("torch",))  # noqa: F821 (injected by Snakemake)
