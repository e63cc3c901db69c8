"""Loading and checking a workflow config: the user's file is the whole truth.

A config file is complete on its own, or names the file it builds on with a top-level ``extends: <path>`` (resolved
relative to the extending file). Plain sections merge recursively over the base; *named* collections (scoring
entries, selection policies, quality policies, feature sets, CurES runs) never do: an extending file that gives
``scoring`` replaces the base's whole ``scoring`` mapping, so nothing runs that the user's file does not list.

Every section is checked against its JSON schema (``workflow/schemas/``) *before* defaults are filled, so messages
quote only what the user wrote; an unknown key is reported with the closest valid key and the file that holds it.
"""

from __future__ import annotations

import copy
import difflib
import glob
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datasel.errors import ConfigError

# Mappings whose keys are names the user chose: inherited whole or replaced whole, never merged entry by entry.
NAMED = {("scoring",), ("selection", "policies"), ("quality", "policies"), ("features", "sets"), ("cures", "runs")}
# Stages that run the selection chain (prepare -> proxy -> scores -> selections -> training) and need its sections.
CHAIN_STAGES = ("selection", "quality", "alchemist")
CHAIN_SECTIONS = ("data", "proxy", "scoring", "selection", "training")
# Policy names the rules give their own meaning: the full-data baseline every comparison includes, and the entry
# the reports measure every margin against.
RESERVED_POLICIES = {"full": "full", "random": "random"}

Path_ = tuple[str, ...]


@dataclass
class LoadedConfig:
    """The merged config and, for every key path, the file that wrote it (for messages)."""

    config: dict[str, Any]
    origin: dict[Path_, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def file_of(self, path: Sequence[str]) -> str | None:
        """The file that wrote ``path`` (or its closest written parent)."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            if path[:n] in self.origin:
                return self.origin[path[:n]]
        return self.files[-1] if self.files else None


# ---------------------------------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path, fix="check the path given to --configfile") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=path,
                          fix="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config file holds a mapping of sections, not a {type(data).__name__}", file=path,
                          fix="write `section: ...` lines at the top level (see config/config.yaml)")
    return data


def _paths(data: Any, prefix: Path_ = ()) -> Iterable[Path_]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, str(k))
            yield from _paths(v, (*prefix, str(k)))


def merge(base: dict[str, Any], over: Mapping[str, Any], prefix: Path_ = ()) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: plain sections recursively, named collections replaced whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        path = (*prefix, str(k))
        if isinstance(v, dict) and isinstance(out.get(k), dict) and path not in NAMED:
            out[k] = merge(out[k], v, path)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_file(path: Path, chain: tuple[Path, ...]) -> LoadedConfig:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"`extends` loops back: {cycle}", file=chain[-1], field="extends",
                          fix="extend a base that does not extend this file")
    raw = _read_yaml(path)
    ext = raw.pop("extends", None)
    origin = {p: str(path) for p in _paths(raw)}
    if ext is None:
        return LoadedConfig(raw, origin, [str(path)])
    if not isinstance(ext, str) or not ext:
        raise ConfigError(f"`extends` must be one file path, got {ext!r}", file=path, field="extends",
                          fix="write `extends: base.yaml` (relative to this file)")
    base_path = Path(ext).expanduser()
    base_path = base_path if base_path.is_absolute() else path.parent / base_path
    if not base_path.is_file():
        raise ConfigError(f"the base config '{ext}' does not exist (looked for {base_path})", file=path,
                          field="extends", fix="give a path relative to this file, or an absolute path")
    base = _load_file(base_path, (*chain, path))
    # a named collection this file gives replaces the base's: forget where the base's entries came from
    kept = {p: f for p, f in base.origin.items()
            if not any(p[: len(n)] == n and n in origin and len(p) > len(n) for n in NAMED)}
    return LoadedConfig(merge(base.config, raw), {**kept, **origin}, [*base.files, str(path)])


def load_config(files: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Load the config files in order (each with its ``extends`` chain), then the ``--config`` overrides.

    Later files are layered over earlier ones with the same rule as ``extends``.
    """
    if not files:
        raise ConfigError("no config file given", fix="pass --configfile, or run from the repository")
    loaded = LoadedConfig({}, {}, [])
    for f in files:
        one = _load_file(Path(f), ())
        loaded = LoadedConfig(merge(loaded.config, one.config), {**loaded.origin, **one.origin},
                              [*loaded.files, *one.files])
    if overrides:
        over = {str(k): v for k, v in overrides.items()}
        loaded.config = merge(loaded.config, over)
        loaded.origin.update({p: "--config" for p in _paths(over)})
    return loaded


# ------------------------------------------------------------------------------------------------- validation


def _schema(schemas_dir: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((schemas_dir / f"{name}.schema.yaml").read_text())


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return _resolve(node, root)
    return schema


def _known_keys(schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """Property names a schema object accepts, through $ref and allOf."""
    schema = _resolve(schema, root)
    keys = list(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        keys += _known_keys(sub, root)
    return keys


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def _unknown_key_error(err: Any, root: dict[str, Any], prefix: Path_, loaded: LoadedConfig) -> ConfigError:
    known = _known_keys(err.schema, root)
    extra = sorted(k for k in err.instance if k not in known)
    key = extra[0] if extra else "?"
    path = (*prefix, *map(str, err.absolute_path))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    section = f"in {_dotted(path)}" if path else "at the top level"
    hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(sorted(known))}"
    fix = f"rename it to `{close[0]}`" if close else f"remove it, or use one of: {', '.join(sorted(known))}"
    return ConfigError(f"unknown key `{key}` {section} ({hint})", file=loaded.file_of((*path, key)),
                       field=_dotted((*path, key)), fix=fix)


def _first_error(validator: Any, instance: Any, root: dict[str, Any]) -> Any:
    # A bad value of a key that comes in through `allOf` (training.optimizer: adamm) also fails
    # unevaluatedProperties, which then names no unknown key: that report is dropped for the real one.
    errors = [e for e in validator.iter_errors(instance)
              if not (e.validator == "unevaluatedProperties" and isinstance(e.instance, dict)
                      and all(k in _known_keys(e.schema, root) for k in e.instance))]
    if not errors:
        return None
    # unknown keys first (a misspelt key explains the other errors it causes), then the shallowest
    return min(errors, key=lambda e: (e.validator not in ("additionalProperties", "unevaluatedProperties"),
                                      len(e.absolute_path), str(list(e.absolute_path))))


_BOUND_KEYWORDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
_TYPE_WORDS = {"integer": "a whole number", "number": "a number", "string": "text", "boolean": "true or false",
               "array": "a list", "object": "a section of `key: value` lines", "null": "empty"}


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(schema: dict[str, Any]) -> str:
    """The range a schema's bound keywords allow, as a reader writes it: (0, 1], at least 1, less than 1."""
    lo_open, hi_open = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
    lo = schema.get("exclusiveMinimum", schema.get("minimum"))
    hi = schema.get("exclusiveMaximum", schema.get("maximum"))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'more than' if lo_open else 'at least'} {_num(lo)}"
    return f"{'less than' if hi_open else 'at most'} {_num(hi)}"


def _in_words(err: Any, field_: str) -> tuple[str, str]:
    """The problem and fix of a schema violation in the words of datasel's other messages: what the value is (the
    schema's ``title``, else the key), what it must be, what it is; never a pointer into the schema files."""
    schema = err.schema if isinstance(err.schema, dict) else {}
    what = schema.get("title") or f"{field_}"
    got = f"got {err.instance!r}"
    about = f" ({schema['description']})" if schema.get("description") else ""
    if err.validator in _BOUND_KEYWORDS:
        allowed = _bounds(schema)
        to = f"a value {allowed}" if allowed.startswith("in ") else allowed
        return f"{what} must be {allowed}; {got}", f"set {field_} to {to}{about}"
    if err.validator == "type":
        types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        want = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return f"{what} must be {want}; {got}", f"write {field_} as {want}{about}"
    if err.validator in ("minItems", "maxItems"):
        side = "at least" if err.validator == "minItems" else "at most"
        items = f"{err.validator_value} item{'s' if err.validator_value != 1 else ''}"
        return (f"{what} must list {side} {items}; got {len(err.instance)}", f"list {side} {items} in {field_}{about}")
    if err.validator == "uniqueItems":
        return f"{what} lists a value twice; {got}", f"list each value of {field_} once"
    if err.validator in ("minLength", "maxLength", "pattern", "format", "multipleOf"):
        return f"{what} is not allowed here: {err.message}", f"change {field_}{about}"
    return f"{what}: {err.message}", f"change {field_}{about or ' (config/config.yaml shows a valid example)'}"


def _check(instance: Any, schema: dict[str, Any], prefix: Path_, loaded: LoadedConfig) -> None:
    from jsonschema import Draft202012Validator

    err = _first_error(Draft202012Validator(schema), instance, schema)
    if err is None:
        return
    if err.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(err.instance, dict):
        raise _unknown_key_error(err, schema, prefix, loaded)
    path = (*prefix, *map(str, err.absolute_path))
    msg, fix = _in_words(err, _dotted(path) or "the config")
    if err.validator == "oneOf":
        about = err.schema.get("description")
        msg = f"{err.instance!r} is not valid here" + (f" ({about})" if about else "")
    elif err.validator == "enum":
        close = difflib.get_close_matches(str(err.instance), [str(v) for v in err.validator_value], n=1)
        fix = (f"did you mean `{close[0]}`? " if close else "") + \
            f"use one of: {', '.join(str(v) for v in err.validator_value)}"
    elif err.validator == "const":
        about = err.schema.get("description")
        msg = f"{err.instance!r} cannot be used here" + (f": {about}" if about else "")
        fix = f"set {_dotted(path)}: {err.validator_value}"
    elif err.validator == "required" and isinstance(err.instance, dict):
        # name the missing key as the field, with what it takes: the user adds exactly that line
        missing = next(k for k in err.validator_value if k not in err.instance)
        path, msg = (*path, missing), f"'{missing}' is required here"
        about = err.schema.get("properties", {}).get(missing, {}).get("description")
        fix = f"add {_dotted(path)}" + (f" ({about})" if about else "")
    raise ConfigError(msg, file=loaded.file_of(path), field=_dotted(path) or None, fix=fix)


def _entry_schema(root: dict[str, Any], common: str, kinds: str, kind: str | None) -> dict[str, Any]:
    """A named entry's schema: the keys every entry takes plus its method's or policy's own keys."""
    base = root["definitions"][common]
    own = root["definitions"][kinds].get(kind, {}) if kind else {}
    return {**base, "properties": {**base.get("properties", {}), **own.get("properties", {})},
            "required": [*base.get("required", []), *own.get("required", [])],
            "additionalProperties": False, "definitions": root["definitions"]}


def _check_entries(cfg: dict[str, Any], root: dict[str, Any], loaded: LoadedConfig) -> None:
    """Scoring entries and policies: each against the keys of its own method or policy."""
    kinds = root["definitions"]
    for name, entry in (cfg.get("scoring") or {}).items():
        method = entry.get("method", name) if isinstance(entry, dict) else None
        method = method if method in kinds["scoring_methods"] else None  # unknown methods: reported by name later
        _check(entry, _entry_schema(root, "scoring_entry", "scoring_methods", method), ("scoring", name), loaded)
    for section in ("selection", "quality"):
        policies = (cfg.get(section) or {}).get("policies") or {}
        for name, entry in policies.items():
            policy = entry.get("policy") if isinstance(entry, dict) else None
            policy = policy if policy in kinds["policy_kinds"] else None
            _check(entry, _entry_schema(root, "policy_entry", "policy_kinds", policy),
                   (section, "policies", name), loaded)


def _fill_defaults(instance: Any, schema: dict[str, Any]) -> None:
    """Fill schema defaults into ``instance`` (the jsonschema FAQ recipe Snakemake's validate uses)."""
    from jsonschema import Draft202012Validator, validators

    props = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict[str, Any], inst: Any, sch: dict[str, Any]) -> Any:
        if isinstance(inst, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    inst.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from props(validator, properties, inst, sch)

    for _ in validators.extend(Draft202012Validator, {"properties": set_defaults})(schema).iter_errors(instance):
        pass


def stage_sections(schemas_dir: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in schemas_dir.glob("*.schema.yaml") if p.name != "config.schema.yaml")


def check_config(loaded: LoadedConfig, schemas_dir: str | Path) -> dict[str, Any]:
    """Validate every section (raising one short ConfigError), then return the config with defaults filled."""
    schemas_dir = Path(schemas_dir)
    cfg = loaded.config
    root = _schema(schemas_dir, "config")
    _check(cfg, root, (), loaded)
    _check_entries(cfg, root, loaded)
    sections = {name: _schema(schemas_dir, name) for name in stage_sections(schemas_dir) if name in cfg}
    for name, schema in sections.items():
        _check(cfg[name], schema, (name,), loaded)
    _check_required(cfg, loaded)
    check_names(cfg, loaded, set(root["definitions"]["policy_kinds"]))
    out = copy.deepcopy(cfg)
    _fill_defaults(out, root)
    for name, schema in sections.items():
        _fill_defaults(out[name], schema)
    return out


def _check_required(cfg: dict[str, Any], loaded: LoadedConfig) -> None:
    stages = cfg.get("stages", ["selection"])
    chain = [s for s in stages if s in CHAIN_STAGES]
    missing = [s for s in CHAIN_SECTIONS if s not in cfg]
    if chain and missing:
        raise ConfigError(f"stage '{chain[0]}' runs the selection chain, which needs these sections: "
                          f"{', '.join(missing)}", file=loaded.file_of(("stages",)), field=missing[0],
                          fix=f"add {', '.join(f'`{m}:`' for m in missing)} (see `datasel init --template default`),"
                              " or `extends:` a complete config")
    if "features" in stages and "data" not in cfg:
        raise ConfigError("stage 'features' needs a `data:` section", file=loaded.file_of(("stages",)),
                          field="data", fix="add a data: section (see config/experiments/features_text.yaml)")


# ------------------------------------------------------------------------------------------------------ names


def percent_of(fraction: float) -> int:
    """The whole percent a kept fraction is named by (``<policy>_keep<percent>``)."""
    return int(round(fraction * 100))


def _check_fractions(fractions: Sequence[float], field_: str, loaded: LoadedConfig) -> None:
    seen: dict[int, float] = {}
    for f in fractions:
        pct = percent_of(f)
        # file names carry the kept share in whole percents: refuse a fraction that would run as another one
        if pct < 1 or not math.isclose(f * 100, pct, abs_tol=1e-9):
            raise ConfigError(f"kept fraction {f} is not a whole percent (it would run as {pct / 100})",
                              file=loaded.file_of(tuple(field_.split("."))), field=field_,
                              fix=f"use whole percents from 0.01 to 1, e.g. {max(pct, 1) / 100}")
        if pct in seen:
            raise ConfigError(f"kept fractions {seen[pct]} and {f} are the same percent", field=field_,
                              file=loaded.file_of(tuple(field_.split("."))), fix="list each fraction once")
        seen[pct] = f


def check_names(cfg: dict[str, Any], loaded: LoadedConfig, policies: set[str]) -> None:
    """Names the rules give a meaning of their own are refused for anything else, before any job runs.

    (An entry whose policy is not a known one is left to the registry check, which names `.policy`.)"""
    for section in ("selection", "quality"):
        sec = cfg.get(section) or {}
        for name, entry in (sec.get("policies") or {}).items():
            base = name.split("_", 1)[0] if name.startswith("full") else name
            wanted = RESERVED_POLICIES.get(base)
            if wanted and entry.get("policy") != wanted and entry.get("policy") in policies:
                role = "the full-data baseline" if wanted == "full" else "the baseline every margin is measured against"
                raise ConfigError(f"the name '{name}' is reserved for `policy: {wanted}` ({role}), but this entry has "
                                  f"`policy: {entry.get('policy')}`",
                                  file=loaded.file_of((section, "policies", name)),
                                  field=f"{section}.policies.{name}", fix="give this policy another name")
        if sec.get("fractions"):
            _check_fractions([f for f in sec["fractions"] if not (section == "quality" and f == 1)],
                             f"{section}.fractions", loaded)
    sets = (cfg.get("features") or {}).get("sets") or {}
    for name, entry in (cfg.get("scoring") or {}).items():
        spec = entry.get("features") if isinstance(entry, Mapping) else None
        if isinstance(spec, str) and spec.partition("/")[0] not in sets:
            raise ConfigError(f"names feature set '{spec.partition('/')[0]}', which does not exist",
                              file=loaded.file_of(("scoring", name, "features")), field=f"scoring.{name}.features",
                              fix=f"use one of: {', '.join(sets)}" if sets else
                                  "add the set under features: sets: (see config/experiments/instruct.yaml)")
    if (cfg.get("data") or {}).get("source") != "instruct":  # hidden states of a causal LM: instruction data only
        for name, fset in sets.items():
            if isinstance(fset, Mapping) and fset.get("kind") == "representation":
                raise ConfigError("kind: representation takes a causal LM's hidden states (instruction data)",
                                  file=loaded.file_of(("features", "sets", name, "kind")),
                                  field=f"features.sets.{name}.kind",
                                  fix="use kind: gradient on this data, or data.source: instruct")
    quality = cfg.get("quality") or {}
    if quality.get("curriculum", "unset") is not None:
        base = quality.get("policies") or (cfg.get("selection") or {}).get("policies") or {}
        for name in base:
            if name.endswith("_cl") and name[:-3] in base:
                section = "quality" if quality.get("policies") else "selection"
                raise ConfigError(f"'{name}' is the name the quality grid gives '{name[:-3]}' with its curriculum",
                                  file=loaded.file_of((section, "policies", name)),
                                  field=f"{section}.policies.{name}", fix="give this policy another name")


# ------------------------------------------------------------------------------------------------------- data


def data_inputs(data: Mapping[str, Any], file: str | None = None) -> list[str]:
    """The local files a ``data`` section reads (a file, a list of files, or every file of a folder, such as a
    ``save_to_disk`` dataset; for ``source: hf``, also the ``data_files`` a builder such as csv reads, globs
    expanded), as inputs of the prepare rule: editing one reruns prepare and all that follows.

    Paths are relative to the working directory (the run folder). A missing local path is refused here, before
    any job; a ``source: hf`` name that is not a local path is a hub dataset and has no local input, and a
    ``data_files`` entry with a URL scheme (``hf://``, ``https://``) is remote.
    """
    source, paths = data.get("source"), data.get("path")
    if source == "instruct":  # the three role files (written by a rule first when data.instruct.generate is set)
        ins = data.get("instruct") or {}
        roles = [str(ins[r]) for r in ("pool", "target", "test") if ins.get(r)]
        if ins.get("generate") is None:
            for role in ("pool", "target", "test"):
                if ins.get(role) and not Path(ins[role]).expanduser().exists():
                    raise ConfigError(f"data.instruct.{role} '{ins[role]}' does not exist (looked in {Path.cwd()})",
                                      file=file, field=f"data.instruct.{role}",
                                      fix="fix the path; relative paths start at the run folder")
        return roles
    if source not in ("files", "hf"):
        return []
    out: list[str] = []
    for p in [] if not paths else [paths] if isinstance(paths, str) else list(paths):
        path = Path(p).expanduser()
        if path.is_dir():
            out += _folder_files(path, str(p), file, "data.path")
        elif path.is_file():
            out.append(str(path))
        elif source == "files" or path.is_absolute() or str(p).startswith((".", "~")) or len(path.parts) > 2:
            raise ConfigError(f"data path '{p}' does not exist (looked in {Path.cwd()})", file=file,
                              field="data.path", fix="fix data.path; relative paths start at the run folder")
    builder_files = data.get("data_files") if source == "hf" else None
    for p in [] if not builder_files else [builder_files] if isinstance(builder_files, str) else list(builder_files):
        if "://" in str(p):
            continue
        path = Path(p).expanduser()
        if glob.has_magic(str(path)):  # the datasets library expands globs itself; so do we, to watch each file
            found = sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
            if not found:
                raise ConfigError(f"data_files pattern '{p}' matches no file (looked in {Path.cwd()})", file=file,
                                  field="data.data_files", fix="fix the pattern; relative paths start at the run folder")
            out += found
        elif path.is_dir():
            out += _folder_files(path, str(p), file, "data.data_files")
        elif path.is_file():
            out.append(str(path))
        else:
            raise ConfigError(f"data file '{p}' does not exist (looked in {Path.cwd()})", file=file,
                              field="data.data_files", fix="fix data.data_files; relative paths start at the run folder")
    return sorted(set(out), key=out.index)  # a file named twice (path and data_files) is one input


def _folder_files(path: Path, given: str, file: str | None, field_: str) -> list[str]:
    found = sorted(str(f) for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not found:
        raise ConfigError(f"the data folder '{given}' holds no files", file=file, field=field_,
                          fix="point data.path at a dataset folder (e.g. one written by save_to_disk)")
    return found
