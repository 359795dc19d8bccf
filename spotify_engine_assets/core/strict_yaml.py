"""The one YAML loader of every file the project reads (model registries, search spaces,
thresholds, A/B plans, promoted configs, run configs, the SQL project's ``schema.yml``).

``yaml.safe_load`` keeps the last of two equal keys of a mapping and drops the first without a
word: a second ``lightgcn:`` in ``models.yaml`` replaces the first config, a second ``songs:`` in a
``schema.yml`` drops the first entry's tests. Here a duplicate key is a
:class:`DuplicateKeyError` (a ``yaml.YAMLError``, so callers that report invalid YAML report it
too) naming the file, the key and both lines. Everything else is ``yaml.SafeLoader``'s.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of the YAML file has the same key twice (its message names file, key and lines)."""

    def __str__(self) -> str:
        return str(self.problem)


class StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` refusing duplicate keys in any mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merge keys: SafeLoader's own rules
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if first is not None:
                where = key_node.start_mark
                raise DuplicateKeyError(
                    None,
                    None,
                    f"{where.name}: line {where.line + 1}: duplicate key {key!r} (first at line {first.line + 1}); "
                    "YAML would keep only the last one",
                    where,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str = "<string>") -> Any:
    """``text`` parsed like ``yaml.safe_load``, a duplicate key a :class:`DuplicateKeyError`;
    ``source`` (the file's path) names the file in every error's position."""
    loader = StrictLoader(text)
    loader.name = str(source)  # the Reader's name: every Mark (error position) carries it
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
