# The selection-quality benchmark: the whole selection chain rerun under results/quality/noise<pct>/ for each
# label-noise level, over more kept fractions and seeds, each policy with and without a curriculum, then one
# rendered comparison against random and full data. Target: `snakemake quality_report`.


if "quality" in config:

    # tables and plots from finished metrics: on a cluster, on the submitting host
    localrules:
        quality_report,

    rule quality_report:
        input:
            lambda wc: [p for r in quality_roots() for p in train_metrics(r)],
            lambda wc: [f"{r}/selections/{s}.parquet" for r in quality_roots() for s in selection_names(r)],
            lambda wc: [p for r in quality_roots() for p in quality_scores(r)],
            lambda wc: [p for r in quality_roots() for p in train_curves(r)],
        output:
            md=report(
                "results/quality/report/quality.md", category="Quality", caption="../workflow/report/quality.rst"
            ),
            csv="results/quality/report/margins.csv",
            accuracy=report(
                "results/quality/report/accuracy_vs_fraction.png",
                category="Quality",
                caption="../workflow/report/quality.rst",
            ),
            compute=report(
                "results/quality/report/accuracy_vs_compute.png",
                category="Quality",
                caption="../workflow/report/quality.rst",
            ),
            noise_plot=report(
                "results/quality/report/noise_dropped.png",
                category="Quality",
                caption="../workflow/report/quality.rst",
            ),
            margin=report(
                "results/quality/report/margin_vs_fraction.png",
                category="Quality",
                caption="../workflow/report/quality.rst",
            ),
            class_mix=report(
                "results/quality/report/class_mix.png", category="Quality", caption="../workflow/report/quality.rst"
            ),
        log:
            "logs/quality_report.log",
        params:
            noise=lambda wc: list(config["quality"]["noise"]),
            metrics=lambda wc: [train_metrics(r) for r in quality_roots()],
            selections=lambda wc: [
                [f"{r}/selections/{s}.parquet" for s in selection_names(r)] for r in quality_roots()
            ],
            examples=lambda wc: [f"{r}/examples/examples.parquet" for r in quality_roots()],
            # every score of each run: how well it finds the injected noisy labels (AUROC, average precision)
            scores=lambda wc: [quality_scores(r) for r in quality_roots()],
            regime=config["quality"].get("regime"),
            batch_size=config["training"]["batch_size"],
            choose_on=config.get("report", {}).get("choose_on", {}),
            # validation accuracy during training, per run: the "still rising" warning
            curves=lambda wc: [train_curves(r) for r in quality_roots()],
            rising_points=config["report"]["rising_points"],
        script:
            script_path("quality_report")

    if stage_on("quality"):
        register_targets("quality", lambda: [*rules.quality_report.output])
