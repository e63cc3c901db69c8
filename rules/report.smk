# Report: summary table and figures of the selection stage, and the DuckDB catalog over every table.
from datasel.snakemake_entry import install_error_summary


# the landing page of `snakemake --report report.html`: the selection summary itself, not only the rule graph
report: "../workflow/report/workflow.rst"


# a step's DataselError is printed once, as the run's last lines, without Snakemake's CalledProcessError tail
install_error_summary()


# The summary files, and the noise figure only when the config injects label noise (without it, no bar differs
# from zero).
REPORT_OUTPUTS = {
    "csv": "results/report/summary.csv",
    "md": report("results/report/summary.md", caption="../workflow/report/summary.rst", category="Selection"),
    "rst": "results/report/summary.rst",  # the same summary, included by the report's landing page
    "plot": report(
        "results/report/accuracy_vs_fraction.png", caption="../workflow/report/accuracy.rst", category="Selection"
    ),
}
# a config without a training section (a stage-only experiment) trains no target model, so draws no curve
if config.get("training", {}).get("curve_points", 0) > 0:
    REPORT_OUTPUTS["curves_plot"] = report(
        "results/report/training_curves.png", caption="../workflow/report/curves.rst", category="Selection"
    )
if float(config.get("data", {}).get("noise", {}).get("fraction", 0) or 0) > 0:
    REPORT_OUTPUTS["noise_plot"] = report(
        "results/report/noise_dropped.png", caption="../workflow/report/noise.rst", category="Selection"
    )


# the summary and the catalog read finished tables for a second or two: on a cluster they run on the submitting host
localrules:
    report,
    catalog,


rule report:
    input:
        examples="results/examples/examples.parquet",
        meta="results/examples/meta.json",  # the user's class names for the class-balance table
        metrics=lambda wc: train_metrics(),
        selections=lambda wc: expand("results/selections/{s}.parquet", s=selection_names()),
        # read for the saturation warning (a score whose values pile up at one end)
        scores=lambda wc: expand("results/scores/{m}.parquet", m=config["scoring"]),
        # validation accuracy during training: the "still rising" warning and the curves figure
        curves=lambda wc: train_curves(),
    output:
        **REPORT_OUTPUTS,
    log:
        "logs/report.log",
    params:
        # what the best method per kept fraction is chosen on (validation accuracy by default)
        choose_on=config.get("report", {}).get("choose_on", {}),
        rising_points=config["report"]["rising_points"],
    script:
        script_path("report")


rule catalog:
    input:
        lambda wc: all_tables(),
    output:
        "results/catalog.duckdb",
    log:
        "logs/catalog.log",
    script:
        script_path("catalog")


if stage_on("selection"):
    if not CHECKS_DONE:
        check_selection_config()
    register_targets(
        "selection",
        lambda: [*rules.report.output, *expand("results/scores/{m}.parquet", m=config["scoring"])],
    )
elif stage_on("features") and "selection" in config:
    # A features run that scores and selects on its features (the text template) has no proxy or training section,
    # so there is no summary to build: its score tables and selections are the run's targets, or `datasel run`
    # would skip the sections the config asks for. full_keep100 is only the training baseline.
    if not CHECKS_DONE:
        check_selection_config()
    register_targets(
        "selection",
        lambda: [
            *expand("results/selections/{s}.parquet", s=[s for s in selection_names() if s != "full_keep100"]),
            *expand("results/scores/{m}.parquet", m=config["scoring"]),
        ],
    )
