# datasel: per-example gradient features -> scores -> selections -> training -> report.
# All logic lives in the `datasel` package; rule files under rules/ call it through workflow/scripts/.
#
# The config is the user's file alone: `--configfile X.yaml` (complete, or naming its base with `extends:`), else
# the repository's config/config.yaml. There is no `configfile:` directive, because Snakemake would merge the
# user's file over it and run entries the user never listed (see datasel/config.py).
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from datasel.config import check_config, data_inputs, load_config
from datasel.errors import DataselError

min_version("9.0")

DEFAULT_CONFIG = Path(workflow.basedir, "config", "config.yaml")
SCHEMAS_DIR = Path(workflow.basedir, "workflow", "schemas")

try:
    CONFIG_SOURCE = load_config(
        list(workflow.config_settings.configfiles) or [DEFAULT_CONFIG], dict(workflow.config_settings.config)
    )
    _checked = check_config(CONFIG_SOURCE, SCHEMAS_DIR)  # validated before defaults: messages quote the user's file
    if _checked.get("data", {}).get("source") == "instruct":  # the chain runs on a causal LM
        from datasel.workflow_support import check_lm_models, resolve_lm_models

        check_lm_models(_checked)
        _checked = resolve_lm_models(_checked)
except DataselError as _exc:
    if _exc.file is None and _exc.field and "CONFIG_SOURCE" in globals():  # name the user's file that holds it
        _exc.file = CONFIG_SOURCE.file_of(_exc.field.split("."))
    raise WorkflowError(str(_exc)) from None
config.clear()
config.update(_checked)

TARGETS = {}


rule all:
    default_target: True
    input:
        lambda wc: "results/catalog.duckdb",
        lambda wc: [t for name in sorted(TARGETS) for t in TARGETS[name]()],


include: "rules/common.smk"


# The selection chain's rule files exist only when their section does (a CurES- or GAPrune-only config has none).
# (scores.smk always: DGA and GAPrune order their score rules before its generic one.)
_SECTION_OF = {"data.smk": "data", "proxy.smk": "proxy", "select.smk": "selection", "train.smk": "training"}
for _smk in sorted(Path(workflow.basedir, "rules").glob("*.smk")):
    _section = _SECTION_OF.get(_smk.name)
    if _smk.name != "common.smk" and (_section is None or _section in config):

        include: str(_smk)
