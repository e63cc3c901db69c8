# datasel: per-example gradient features -> scores -> selections -> training -> report.
# All logic lives in the `datasel` package; rule files under rules/ call it through workflow/scripts/.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

TARGETS = {}


rule all:
    input:
        lambda wc: "results/catalog.duckdb",
        lambda wc: [t for name in sorted(TARGETS) for t in TARGETS[name]()],
    default_target: True


include: "rules/common.smk"


for _smk in sorted(Path(workflow.basedir, "rules").glob("*.smk")):
    if _smk.name != "common.smk":

        include: str(_smk)
