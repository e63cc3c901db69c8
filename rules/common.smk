# Helpers shared by every rule file: target registration, per-section validation, config slices.
import json

from snakemake.utils import validate

SCHEMAS_DIR = Path(workflow.basedir, "workflow", "schemas")
SCRIPTS = str(Path(workflow.basedir, "workflow", "scripts"))


def register_targets(name, fn):
    """Register a stage's final outputs (a zero-argument function returning paths) for `rule all` and the catalog."""
    TARGETS[name] = fn


def validate_section(name):
    """Validate config[name] against workflow/schemas/<name>.schema.yaml (fills its defaults)."""
    validate(config[name], str(SCHEMAS_DIR / f"{name}.schema.yaml"))


def stage_on(name):
    return name in config.get("stages", [])


def script(name):
    return f"{SCRIPTS}/{name}.py"


def all_tables():
    return [t for name in sorted(TARGETS) for t in TARGETS[name]()]
