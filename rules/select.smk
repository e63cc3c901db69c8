# Selection: one table per (policy entry, kept fraction), named <policy>_keep<percent>; `full_keep100` is the
# full-data baseline every comparison includes.


def selection_names():
    names = [f"{p}_keep{round(f * 100)}" for p in config["selection"]["policies"] for f in config["selection"]["fractions"]]
    return names + ["full_keep100"]


def policy_entry(name):
    return {"policy": "full"} if name == "full" else config["selection"]["policies"][name]


def select_inputs(wc):
    entry = policy_entry(wc.policy)
    inputs = {"examples": "results/examples/examples.parquet"}
    if entry.get("score"):
        inputs["scores"] = f"results/scores/{entry['score']}.parquet"
    if entry.get("curriculum", {}).get("score"):
        inputs["order"] = f"results/scores/{entry['curriculum']['score']}.parquet"
    return inputs


rule select:
    input:
        unpack(select_inputs),
    output:
        "results/selections/{policy}_keep{pct}.parquet",
    params:
        policy=lambda wc: policy_entry(wc.policy),
        fraction=lambda wc: int(wc.pct) / 100,
        seed=config["selection"]["seed"],
    wildcard_constraints:
        policy=r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*",
        pct=r"\d+",
    log:
        "logs/select/{policy}_keep{pct}.log",
    script:
        script_path("select")
