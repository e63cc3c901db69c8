from datasel.pipeline import train
from datasel.snakemake_entry import compute_device, over_outputs, run_step


def train_seed(s, seed: str, out: str) -> None:
    train(s.input.examples, s.input.meta, s.input.selection, out, s.params.training, int(seed),
          s.wildcards.selection, s.params.info, curriculum=s.params.curriculum, device=compute_device(s))


run_step(snakemake, over_outputs(train_seed, "seed", "seeds"), preload=("torch",))  # noqa: F821 (injected)
