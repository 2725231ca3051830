"""The study config: its JSON schema (YAML file, with defaults), validation with one-line errors
that name the key, and reading/writing a config file. Ids (study, dataset, subject, method) follow
:data:`ID_PATTERN`."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from registration_core.core.io import atomic_path
from registration_core.core.yaml_io import load_yaml_file
from registration_core.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")
"""The config's JSON schema (YAML, with defaults): package data beside this module, so an installed
package (``pip install .``, not editable) finds it; the workflow validates against the same file."""

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*"
"""Subject, dataset, study and method ids: no ``/``, no ``__``, no leading or trailing ``_``."""


def _extend_with_defaults(validator_class: type) -> type:
    """A jsonschema validator class that fills ``default`` values of ``properties`` in place."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping, instance: Any, schema: Mapping) -> Iterator:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config JSON schema (YAML file); InputError when it cannot be read."""
    if not path.is_file():
        raise InputError(f"config schema {path} not found (it ships inside the registration_core package)")
    return load_yaml_file(path, "config schema")


def _key_path(path: Sequence[Any]) -> str:
    """``["methods", "nodeo", "grid", "lr", 0]`` -> ``config key methods.nodeo.grid.lr[0]``;
    the root is ``config``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"config key {text}" if text else "config"


def _allowed_keys(schema: Mapping[str, Any], instance: Any, validator: Any) -> list[str]:
    """Keys ``schema`` defines for ``instance``: its properties and those of matching if/then branches."""
    keys = list(schema.get("properties", {}))
    for branch in schema.get("allOf", []):
        if "if" in branch and validator.evolve(schema=branch["if"]).is_valid(instance):
            keys += list(branch.get("then", {}).get("properties", {}))
    return sorted(set(keys))


def _describe(error: jsonschema.ValidationError, validator: Any) -> str:
    """One line: the key path and what is allowed there."""
    where = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(schema, error.instance, validator)
        extra = re.findall(r"'([^']+)'", error.message)
        unknown = ", ".join(extra) if extra else "?"
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown key {unknown}{hint}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"
    description = schema.get("description")
    if error.validator in ("anyOf", "oneOf") and isinstance(description, str):
        return f"{where}: not a valid value; expected: {description.strip()}"
    return f"{where}: {error.message}"


def validate_config(raw: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``raw`` validated against the schema with its defaults filled in.

    Raises InputError naming the key path (e.g. ``methods.nodeo.grid.lr``) and what is allowed.
    Only the structure is checked here; method parameters and subjects are checked by :class:`Study`.
    """
    if not isinstance(raw, Mapping):
        raise InputError(f"config: expected a mapping of keys, got {type(raw).__name__}")
    config = copy.deepcopy(dict(raw))
    validator = _DefaultFillingValidator(schema if schema is not None else load_schema())
    errors = list(validator.iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise InputError(_describe(best, validator))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML study config and return it validated with defaults filled in (InputError on error)."""
    path = Path(path)
    raw = read_config_file(path)
    try:
        return validate_config(raw)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (not validated). InputError naming the file when it is
    missing, empty, not a mapping, or not valid YAML -- including a key given twice (with its line)
    and an anchor/alias bomb (:func:`registration_core.core.yaml_io.load_yaml_text`)."""
    path = Path(path)
    raw = load_yaml_file(path, "config file")
    if raw is None:
        raise InputError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: config file must hold a mapping of keys, found {type(raw).__name__}")
    return raw


def check_config_files(paths: Sequence[str | Path]) -> None:
    """Read every config file Snakemake was given with :func:`read_config_file` (Snakemake's own
    YAML reader keeps the last of two equal keys without a word)."""
    for path in paths:
        read_config_file(path)


def write_config(config: Mapping[str, Any], path: str | Path) -> None:
    """Write a (resolved) config as YAML, keys in their config order, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None))


