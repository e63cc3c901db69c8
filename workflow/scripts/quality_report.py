from datasel.report.quality import quality_report
from datasel.snakemake_entry import run_step


def step(s) -> None:
    p, o = s.params, s.output
    quality_report(p.noise, p.metrics, p.selections, p.examples, scores=p.get("scores"), regime=p.get("regime"),
                   batch_size=int(p.batch_size), choose_on=p.get("choose_on"), md=o.md, csv=o.csv,
                   accuracy=o.accuracy, compute=o.compute, noise_plot=o.noise_plot, margin=o.get("margin"),
                   class_mix=o.get("class_mix"), curves=p.get("curves"),
                   rising_points=p.rising_points)


run_step(snakemake, step)  # noqa: F821 (injected by Snakemake)
