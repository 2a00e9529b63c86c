"""The workflow configuration check, run by the Snakefile before anything else: config/config.yaml (with any
--configfile / --config on top) against workflow/schemas/config.schema.yaml, every problem named with where it
is, e.g. ``config: unknown key 'datasets.demo.spcing' (known: already_hu, generate, ...)``.

Beyond the schema: the keys of model presets and of ablation model overrides against Reg2RGConfig, and that
every name which refers to something exists (default_dataset and ablations.paper to data sets; a data set's
model_preset, training.<name> and generation.resources.<name> to presets; ablations.table and
ablations.paper.<dataset> to ablation settings). A typo is an error here, never a setting silently unused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from reg2rg.errors import ConfigError


def _where(path: Iterable) -> str:
    return ".".join(str(p) for p in path)


def _known(names: Iterable) -> str:
    names = sorted(str(n) for n in names)
    return f" (known: {', '.join(names)})" if names else ""


def _unknown(path: str, known: Iterable) -> str:
    return f"config: unknown key '{path}'{_known(known)}"


def schema_problems(config: dict, schema: dict) -> list[str]:
    """One line per schema violation; an unknown key as `config: unknown key 'a.b.c' (known: ...)`."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _where(err.absolute_path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            known = err.schema.get("properties", {})
            for key in sorted(set(err.instance) - set(known), key=str):
                out.append(_unknown(_where([*err.absolute_path, key]), known))
        else:
            out.append(f"config: {where or 'top level'}: {err.message}")
    return out


def reference_problems(config: dict) -> list[str]:
    """Names that must refer to a data set, a preset or an ablation setting; model keys against Reg2RGConfig."""
    from reg2rg.model.config import unknown_keys

    out = []
    datasets = config.get("datasets") or {}
    presets = config.get("presets") or {}
    ablations = config.get("ablations") or {}
    settings = ablations.get("settings") or {}
    default = config.get("default_dataset")
    if default is not None and default not in datasets:
        out.append(f"config: default_dataset {default!r} is no data set{_known(datasets)}")
    for name, ds in datasets.items():
        metadata = {k: v for k, v in ((ds or {}).get("ctrate_metadata") or {}).items() if v}
        if metadata and (ds or {}).get("layout") != "radgenome":
            out.append(f"config: datasets.{name}.ctrate_metadata is set ({', '.join(sorted(metadata))}) but only "
                       f"the radgenome layout reads CT-RATE metadata (layout {(ds or {}).get('layout')!r})")
        preset = (ds or {}).get("model_preset")
        if preset is not None and preset not in presets:
            out.append(f"config: datasets.{name}.model_preset {preset!r} is no preset{_known(presets)}")
    for section, mapping in (("training", config.get("training")),
                             ("generation.resources", (config.get("generation") or {}).get("resources"))):
        for key in mapping or {}:
            if key not in presets:
                out.append(_unknown(f"{section}.{key}", presets) + ": no preset of that name")
    for name, preset in presets.items():
        out += [_unknown(f"presets.{name}.{path}", known) for path, known in unknown_keys(preset)]
    for name, setting in settings.items():
        model = (setting or {}).get("model")
        out += [_unknown(f"ablations.settings.{name}.model.{path}", known) for path, known in unknown_keys(model)]
    for i, name in enumerate(ablations.get("table") or []):
        if name not in settings:
            out.append(f"config: ablations.table[{i}] {name!r} is no ablation setting{_known(settings)}")
    for ds, rows in (ablations.get("paper") or {}).items():
        if ds not in datasets:
            out.append(_unknown(f"ablations.paper.{ds}", datasets) + ": no data set of that name")
        for name in rows or {}:
            if name not in settings:
                out.append(_unknown(f"ablations.paper.{ds}.{name}", settings) + ": no ablation setting of that name")
    return out


def config_problems(config: dict, schema: dict) -> list[str]:
    problems = schema_problems(config, schema)
    if isinstance(config, dict):
        problems += reference_problems(config)
    return problems


WORKFLOW_CONFIG = Path("config") / "config.yaml"  # relative to the working directory, as `snakemake` reads it


def read_workflow_config(path: str | Path | None = None) -> dict:
    """The workflow config `path` as a mapping; default WORKFLOW_CONFIG, in the working directory (never the
    package's own source tree: the workflow passes resolved settings, and a user's config is theirs)."""
    import yaml

    path = Path(path) if path is not None else WORKFLOW_CONFIG
    if not path.is_file():
        hint = " (run from the workflow's folder, or give the config's path)" if path == WORKFLOW_CONFIG else ""
        raise ConfigError(f"{path}: no workflow config here{hint}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the workflow config: {err}") from err


def load_schema(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def check_config(config: dict, schema_path: str | Path) -> None:
    """ConfigError listing every problem of the configuration (one per line); nothing when it is valid."""
    problems = config_problems(config, load_schema(schema_path))
    if problems:
        n = len(problems)
        raise ConfigError(f"{n} problem{'s' if n > 1 else ''} in the configuration "
                          f"(schema {schema_path}):\n" + "\n".join(problems))

