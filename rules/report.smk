# Report: summary table and figures of the selection stage, and the DuckDB catalog over every table.
from datasel.snakemake_entry import install_error_summary

# a step's DataselError is printed once, as the run's last lines, without Snakemake's CalledProcessError tail
install_error_summary()


rule report:
    input:
        examples="results/examples/examples.parquet",
        metrics=lambda wc: train_metrics(),
        selections=lambda wc: expand("results/selections/{s}.parquet", s=selection_names()),
    output:
        csv="results/report/summary.csv",
        md=report("results/report/summary.md", caption="../workflow/report/summary.rst", category="Selection"),
        plot=report("results/report/accuracy_vs_fraction.png", caption="../workflow/report/accuracy.rst", category="Selection"),
        noise_plot=report("results/report/noise_dropped.png", caption="../workflow/report/noise.rst", category="Selection"),
    log:
        "logs/report.log",
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
    check_selection_config()
    register_targets(
        "selection",
        lambda: [*rules.report.output, *expand("results/scores/{m}.parquet", m=config["scoring"])],
    )
