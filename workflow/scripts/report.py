from datasel.report.build import report
from datasel.snakemake_entry import run_step


def step(s) -> None:
    report(s.input.examples, s.input.metrics, s.input.selections, scores=s.input.get("scores", []),
           meta=s.input.get("meta"), choose_on=s.params.get("choose_on"), csv=s.output.csv, md=s.output.md,
           rst=s.output.rst, plot=s.output.plot, noise_plot=s.output.get("noise_plot"),
           curves=s.input.get("curves", []), curves_plot=s.output.get("curves_plot"),
           rising_points=s.params.rising_points)


run_step(snakemake, step)  # noqa: F821 (injected by Snakemake)
