"""The VS Code extension's settings schema says what the server accepts: the same keys,
defaults, choices and bounds (engine/options.py is the one source)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from lsp.settings import Settings, snake_to_camel

PACKAGE = Path(__file__).parents[2] / "editors" / "vscode" / "package.json"
EDITOR_ONLY = {"serverPath", "serverArgs", "trace.server"}
"""Settings of the extension itself, never sent to the server."""


def server_fields(cls: type = Settings, prefix: str = "") -> dict[str, tuple[dataclasses.Field, typing.Any, object]]:
    """camelCase key -> (field, type, default) for every leaf of the settings tree."""
    hints = typing.get_type_hints(cls)
    out = {}
    default_instance = cls()
    for f in dataclasses.fields(cls):
        key = prefix + snake_to_camel(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out |= server_fields(hints[f.name], key + ".")
        else:
            out[key] = (f, hints[f.name], getattr(default_instance, f.name))
    return out


def schema() -> dict[str, dict]:
    properties = json.loads(PACKAGE.read_text(encoding="utf-8"))["contributes"]["configuration"]["properties"]
    return {key.removeprefix("codellama."): value for key, value in properties.items()}


def test_the_schema_has_exactly_the_server_keys():
    assert set(schema()) - EDITOR_ONLY == set(server_fields())


@pytest.mark.parametrize("key", sorted(server_fields()))
def test_defaults_choices_and_bounds_agree(key):
    field, kind, default = server_fields()[key]
    entry = schema()[key]
    expected_default = "" if key == "model" else default  # "" is the shipped model, like null
    assert entry["default"] == expected_default
    if typing.get_origin(kind) is typing.Literal:
        assert entry["enum"] == list(typing.get_args(kind))
    low, high = field.metadata.get("range", (None, None))
    if low is not None:
        assert (entry.get("minimum"), entry.get("maximum")) == (low, high)
        assert entry["type"] == ("integer" if kind is int else "number")
    else:
        assert "minimum" not in entry and "maximum" not in entry
