"""Typed config trees: dataclasses <- TOML/JSON files and `--section.field` flags.

Every error names the field by its dotted path (`train.lr: expected a number, got 'fast'`),
unknown keys are rejected (a typo is not silently ignored), and each field's help text is
the docstring written under it, read from the source as litgpt/simple_parsing do.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or flag is invalid; the message names the file and the field."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the string literal written under it} for a dataclass."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a parsed (TOML/JSON) value to the annotated type."""
    origin, type_args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in type_args:
            return None
        errors = []
        for option in (a for a in type_args if a is not type(None)):
            try:
                return convert(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in type_args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, type_args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and type_args and type_args[-1] is not Ellipsis:
            if len(value) != len(type_args):
                raise ConfigError(f"{where}: expected {len(type_args)} values, got {len(value)}")
            return tuple(convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, type_args, strict=True)))
        item = type_args[0] if type_args else Any
        items = [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_describe(tp)}")


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown field (known: {', '.join(known)})")
    kwargs = {key: convert(value, hints[key], f"{prefix}.{key}" if prefix else key) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def read_config_file(path: str | Path) -> dict:
    """A .toml or .json config file as a dict."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from e
    try:
        if path.suffix == ".json":
            values = json.loads(raw)
        else:
            values = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a table of sections")
    return values


# ---- command-line flags: one `--section.field` per leaf field ----


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted name, type, doc) of every non-dataclass field of the tree."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            leaves += leaf_fields(hints[f.name], name + ".")
        else:
            leaves.append((name, hints[f.name], docs.get(f.name, "")))
    return leaves


def add_field_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    group = parser.add_argument_group("config fields (override the --config file)")
    for name, tp, doc in leaf_fields(cls):
        group.add_argument(f"--{name}", dest=f"field:{name}", metavar=_metavar(tp), help=doc, default=None)


def _metavar(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "A,B,..."
    if origin is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    return "VALUE"


def parse_flag(text: str, tp: Any, where: str) -> Any:
    """A flag's string as the value a config file would hold."""
    origin, type_args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in type_args:
            return None
        tp = next(a for a in type_args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        item = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return [parse_flag(part.strip(), item, where) for part in text.split(",") if part.strip()]
    if tp is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--{where}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--{where}: expected a number, got {text!r}") from None
    if tp is dict or origin is dict:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--{where}: expected a JSON object: {e}") from None
    return text


def apply_flags(values: dict, args: argparse.Namespace, cls: type) -> dict:
    """Merge `--section.field` flags into a config dict (nested by the dots)."""
    for name, tp, _ in leaf_fields(cls):
        text = getattr(args, f"field:{name}", None)
        if text is None:
            continue
        *sections, key = name.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{section}: expected a table of fields")
        node[key] = parse_flag(text, tp, name)
    return values
