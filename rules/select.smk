# Selection: one table per (policy entry, kept fraction), named <policy>_keep<percent>; `full_keep100` is the
# full-data baseline every comparison includes.
from datasel.selection.draws import policy_draws


def selection_names(root="results"):
    sel = run_cfg(root)["selection"]
    names = [f"{p}_keep{round(f * 100)}" for p in sel["policies"] for f in sel["fractions"]]
    # a filter entry also runs at kept fraction 1 (all it does not flag), to compare with the full noisy set
    names += [f"{p}_keep100" for p, e in sel["policies"].items()
              if e.get("policy") == "filter" and f"{p}_keep100" not in names]
    return names + ["full_keep100"]


def policy_entry(name, root="results"):
    """The policy's config entry; a policy that reads gradient features gets the index path of this run's."""
    if name == "full":
        return {"policy": "full"}
    return resolve_feature_policy(run_cfg(root)["selection"]["policies"][name], root)


def select_inputs(wc):
    entry = policy_entry(wc.policy, wc.root)
    inputs = {"examples": f"{wc.root}/examples/examples.parquet"}
    if entry.get("score"):
        inputs["scores"] = f"{wc.root}/scores/{entry['score']}.parquet"
    if entry.get("curriculum", {}).get("score"):
        inputs["order"] = f"{wc.root}/scores/{entry['curriculum']['score']}.parquet"
    if entry.get("policy") in FEATURE_POLICIES:
        inputs["features"] = entry["features"]
    return inputs


rule select:
    input:
        unpack(select_inputs),
    output:
        "{root}/selections/{policy}_keep{pct}.parquet",
    params:
        policy=lambda wc: canon(policy_entry(wc.policy, wc.root)),
        fraction=lambda wc: int(wc.pct) / 100,
        seed=lambda wc: run_cfg(wc.root)["selection"]["seed"],
        # a policy that draws random numbers makes one subset per training seed; None for deterministic ones
        draws=lambda wc: policy_draws(policy_entry(wc.policy, wc.root),
                                      run_cfg(wc.root).get("training", {}).get("seeds")),
    wildcard_constraints:
        root=ROOT_RE,
        policy=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
        pct=r"\d+",
    threads: THREADS
    resources:
        **job_resources("select"),
    # one Slurm job with the training of this selection (a select step alone takes a second)
    group:
        "select_train"
    log:
        "logs/{root}/select/{policy}_keep{pct}.log",
    script:
        script_path("select")
