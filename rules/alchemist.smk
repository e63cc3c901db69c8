# Alchemist (METHODS.md §3): the scorer ('alchemist') and the Shift-Gsampling policy ('shift_gsampling') run
# through the generic score/select rules; this stage adds the diagnostics of where each rating puts the label noise.

if stage_on("alchemist"):
    for _name in config["alchemist"]["scores"]:
        if _name not in config["scoring"]:
            fail(
                f"names scoring entry '{_name}', which does not exist",
                "alchemist.scores",
                f"use entries of scoring: {', '.join(config['scoring'])}",
            )
    _pol = config["alchemist"].get("policy")
    if _pol is not None and _pol not in config.get("selection", {}).get("policies", {}):
        fail(
            f"names policy '{_pol}', which does not exist",
            "alchemist.policy",
            "use an entry of selection.policies with policy: shift_gsampling",
        )

    # metrics and a plot from finished score tables: on a cluster, on the submitting host
    localrules:
        alchemist_diagnostics,

    rule alchemist_diagnostics:
        input:
            examples="results/examples/examples.parquet",
            scores=expand("results/scores/{s}.parquet", s=config["alchemist"]["scores"]),
        output:
            metrics="results/metrics/alchemist_rating.parquet",
            plot=report(
                "results/plots/alchemist_rating.png",
                category="Alchemist",
                caption="../workflow/report/alchemist.rst",
            ),
        log:
            "logs/alchemist/diagnostics.log",
        params:
            alchemist=canon(config["alchemist"]),
            policy=canon(
                config["selection"]["policies"].get(config["alchemist"]["policy"])
                if config["alchemist"].get("policy")
                else None
            ),
        script:
            script_path("alchemist_diagnostics")

    register_targets("alchemist", lambda: [*rules.alchemist_diagnostics.output])
