from datasel.pipeline import train
from datasel.snakemake_entry import compute_device, over_outputs, run_step


def train_seed(s, seed: str, outs: list[str]) -> None:
    train(s.input.examples, s.input.meta, s.input.selection, outs[0], s.params.training, int(seed),
          s.wildcards.selection, s.params.info, curriculum=s.params.curriculum, device=compute_device(s),
          curves_out=outs[1] if len(outs) > 1 else None)


run_step(snakemake, over_outputs(train_seed, "seed", "seeds"), preload=("torch",))  # noqa: F821 (injected)
