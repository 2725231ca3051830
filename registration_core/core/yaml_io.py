"""Reading YAML the project's way: every YAML file or text the project reads goes through here.

PyYAML's ``safe_load`` silently keeps the last of two equal keys (a repeated method block replaces
the first one whole) and expands anchors/aliases into shared objects that explode when copied or
written (the "billion laughs" document). :func:`load_yaml_text` refuses both, and reports syntax
errors (a tab in the indentation, an unclosed bracket) on one line with the line number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from registration_core.errors import InputError

MAX_NODES = 1_000_000
"""Most nodes a document may hold once its aliases are expanded (a study config holds a few thousand)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first is not None:
                raise InputError(
                    f"duplicate key {key!r} on line {key_node.start_mark.line + 1} (first on line {first})"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes of ``node`` with every alias expanded (memoised: linear in the document's text)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += _expanded_size(child, memo)
            if total > MAX_NODES:
                break
        memo[key] = total
    return memo[key]


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document; InputError ``"<where>: ..."`` on one line when it is not valid YAML,
    repeats a key, or expands (through anchors and aliases) to more than :data:`MAX_NODES` nodes.

    ``where`` names the source in messages: a file path or an option such as ``--set lr``.
    """
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise InputError(f"expands to more than {MAX_NODES} values through anchors and aliases")
        return loader.construct_document(node)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = f" on line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"{where}: not valid YAML{line}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse a YAML file as :func:`load_yaml_text` does; InputError naming ``path`` (and
    ``what`` it is, e.g. "config file") when it is missing, a folder, not UTF-8 text or bad YAML."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: {what} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    return load_yaml_text(text, str(path))
