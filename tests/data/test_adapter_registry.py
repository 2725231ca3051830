"""The adapter registry (registration_core.data.adapters) and the config schema agree.

Every adapter declares its config keys as Params; the schema documents them: the keys of the
adapters that read a dataset folder under ``$defs/adapter_<name>``, those of ``demo`` and ``truth``
(which the schema validates) in the dataset's ``if adapter == <name>`` branches. For each adapter
the schema must list the declared keys in declaration order, with the declared JSON type (and
``null`` when nullable), choices, bounds, list item type, default, required keys and help text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from registration_core.core.params import Param
from registration_core.data.adapters import ADAPTER_KEYS, ADAPTERS, MANIFEST_ADAPTERS, AdapterConfig
from registration_core.study.config import load_schema
from registration_core.study.plan import STUDY_DATASET_KEYS

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}
NO_DEFAULT = "<no default>"


def words(text: str) -> str:
    """Whitespace-normalised text (YAML folds long descriptions)."""
    return " ".join(str(text).split())


def declared_facts(param: Param) -> dict[str, Any]:
    """What the schema must say about a declared key."""
    facts: dict[str, Any] = {"description": words(param.help)}
    if param.choices is not None:
        facts["enum"] = [*param.choices, *([None] if param.nullable else [])]
    else:
        facts["type"] = sorted({JSON_TYPES[param.type], *(["null"] if param.nullable else [])})
    if param.item is not None:
        facts["items"] = JSON_TYPES[param.item]
    if param.minimum is not None:
        facts["exclusiveMinimum" if param.exclusive_minimum else "minimum"] = param.minimum
    if param.maximum is not None:
        facts["maximum"] = param.maximum
    default = list(param.default) if isinstance(param.default, tuple) else param.default
    facts["default"] = NO_DEFAULT if param.required else default
    return facts


def schema_facts(prop: dict[str, Any]) -> dict[str, Any]:
    """The same facts read from a schema property."""
    facts: dict[str, Any] = {"description": words(prop.get("description", ""))}
    if "enum" in prop:
        facts["enum"] = prop["enum"]
    if "type" in prop:
        facts["type"] = sorted([prop["type"]] if isinstance(prop["type"], str) else prop["type"])
    if "items" in prop:
        facts["items"] = prop["items"]["type"]
    for bound in ("minimum", "exclusiveMinimum", "maximum"):
        if bound in prop:
            facts[bound] = prop[bound]
    facts["default"] = prop.get("default", NO_DEFAULT)
    return facts


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema()


def key_schema(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The schema object documenting adapter ``name``'s keys, study keys left out."""
    dataset = schema["$defs"]["dataset"]
    branches = [b for b in dataset.get("allOf", []) if b["if"]["properties"]["adapter"].get("const") == name]
    if name in MANIFEST_ADAPTERS:
        assert not branches, f"{name}: documented keys must not be validated by the schema (the adapter checks them)"
        return schema["$defs"][f"adapter_{name}"]
    assert len(branches) == 1, f"{name}: expected one `if adapter == {name}` branch"
    then = dict(branches[0]["then"])
    study = {key: then["properties"][key] for key in STUDY_DATASET_KEYS}
    assert study == dict.fromkeys(STUDY_DATASET_KEYS, True), f"{name}: the study's keys are allowed as they are"
    return {**then, "properties": {k: v for k, v in then["properties"].items() if k not in STUDY_DATASET_KEYS}}


def test_schema_is_valid_and_lists_every_adapter(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["dataset"]["properties"]["adapter"]["enum"] == list(ADAPTERS)
    documented = {name.removeprefix("adapter_") for name in schema["$defs"] if name.startswith("adapter_")}
    assert documented == set(MANIFEST_ADAPTERS)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_schema_documents_the_declared_keys(schema: dict[str, Any], name: str) -> None:
    adapter = ADAPTERS[name]
    documented = key_schema(schema, name)
    assert words(documented.get("description", "")) == words(adapter.help)
    assert list(documented["properties"]) == list(adapter.keys)
    assert documented.get("required", []) == [p.name for p in adapter.params if p.required]
    for param in adapter.params:
        assert schema_facts(documented["properties"][param.name]) == declared_facts(param), f"{name}.{param.name}"


def test_registry_declarations() -> None:
    assert MANIFEST_ADAPTERS == ("folder", "neurite-oasis", "dirlab", "learn2reg", "fire")
    assert [name for name, adapter in ADAPTERS.items() if adapter.build is None] == ["demo", "truth"]
    for name, adapter in ADAPTERS.items():
        assert adapter.name == name and ADAPTER_KEYS[name] == adapter.keys
        assert len(set(adapter.keys)) == len(adapter.keys), f"{name}: a key is declared twice"
        assert not set(adapter.keys) & set(STUDY_DATASET_KEYS), f"{name}: declares a key the study reads"
        for param in adapter.params:
            assert param.help, f"{name}.{param.name}: no help text"
            assert param.required or param.nullable or param.default is not None, f"{name}.{param.name}: no default"
            assert (param.type is list) == (param.item is not None), f"{name}.{param.name}: item type of a list only"


def test_adapter_config_reads_declared_keys_with_their_defaults(tmp_path: Path) -> None:
    config = AdapterConfig(ADAPTERS["dirlab"], {"path": str(tmp_path), "fixed_phase": None}, tmp_path, "datasets.d")
    assert config.items("phases") == ["T00", "T50"] and config.get("fixed_phase") is None
    assert config.flag("landmarks") is True and config.number("intercept") == -1024.0
    assert config.folder() == tmp_path
    with pytest.raises(KeyError, match="'variant' is not a declared key"):
        config.get("variant")
