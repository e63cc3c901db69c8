# Selection: one table per (policy entry, kept fraction), named <policy>_keep<percent>; `full_keep100` is the
# full-data baseline every comparison includes.
from datasel.selection.draws import policy_draws


rule select:
    input:
        unpack(select_inputs),
    output:
        "{root}/selections/{policy}_keep{pct}.parquet",
    log:
        "logs/{root}/select/{policy}_keep{pct}.log",
    wildcard_constraints:
        root=ROOT_RE,
        policy=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
        pct=r"\d+",
    # one Slurm job with the training of this selection (a select step alone takes a second)
    group:
        "select_train"
    threads: THREADS
    resources:
        **job_resources("select"),
    params:
        policy=lambda wc: canon(policy_entry(wc.policy, wc.root)),
        fraction=lambda wc: int(wc.pct) / 100,
        seed=lambda wc: run_cfg(wc.root)["selection"]["seed"],
        # a policy that draws random numbers makes one subset per training seed; None for deterministic ones
        draws=lambda wc: policy_draws(
            policy_entry(wc.policy, wc.root), run_cfg(wc.root).get("training", {}).get("seeds")
        ),
    script:
        script_path("select")
