"""The server's settings: a typed dataclass tree, read from the client's camelCase JSON.

Clients send one object (PROTOCOL.md) as `initializationOptions` and as the `codellama`
section of `workspace/didChangeConfiguration`. `parse_settings` never raises: an unknown
key or a bad value becomes a problem message (shown to the user) and the default is kept.
Choices, defaults and bounds come from engine/options.py (torch-free, like this module:
the server answers `initialize` before torch is loaded).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from engine.options import BackendKind, CompletionSettings, Device, PromptSettings, Quantization

__all__ = ["PromptSettings", "Settings", "parse_settings", "to_json", "with_overrides"]

UNION_TYPES = (typing.Union, types.UnionType)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class BackendSettings:
    """A shared inference server to complete with instead of the model in this process."""

    url: str | None = None
    """http(s)://HOST:PORT of vLLM, SGLang or llama.cpp's server; None: the model runs here."""
    kind: BackendKind = "openai"
    """openai: /v1/completions with token-id prompts; llamacpp: llama.cpp's /completion."""
    api_key_env: str | None = None
    """The environment variable that holds the API key (never the key itself)."""
    model: str | None = None
    """The served model's name; None: the first the server lists."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass
class Settings(CompletionSettings):
    """Everything a client can configure (PROTOCOL.md lists the keys in camelCase): what the
    server loads, and (inherited) what one completion may be."""

    enable: bool = True
    """Serve completions at all."""
    model: str | None = None
    """Checkpoint folder; None is the model shipped with the package."""
    device: Device = "auto"
    """Where the model runs: "auto" picks CUDA when available."""
    quantize: Quantization = "none"
    """Weight quantization applied at load time."""
    backend: BackendSettings = dataclasses.field(default_factory=BackendSettings)
    """A shared inference server; `model` then only supplies the tokenizer."""
    prefetch: bool = True
    """While a completion is shown, compute the one that follows accepting it."""
    classic_completion: bool = False
    """Also offer textDocument/completion to a client that has inline completion (read at initialize)."""


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def describe(kind: Any) -> str:
    """Human words for a field's type, used in problem messages."""
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(f'"{c}"' for c in typing.get_args(kind))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(kind) in UNION_TYPES:
        return " or ".join(describe(k) for k in typing.get_args(kind))
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def convert(value: Any, kind: Any) -> tuple[bool, Any]:
    """(ok, value) for a JSON value checked against a field type."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        return (value in typing.get_args(kind), value)
    if origin in UNION_TYPES:
        for option in typing.get_args(kind):
            ok, converted = convert(value, option)
            if ok:
                return True, converted
        return False, value
    if kind is type(None):
        return value is None, None
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        # JSON has one number type: accept 3.0 but not 3.5, and never true/false.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        if isinstance(value, float):  # NaN and Infinity are floats too, and not integers
            return (True, int(value)) if value.is_integer() else (False, value)
        return True, value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    return False, value


def parse_into(cls: type, values: Any, path: str, problems: list[str]) -> Any:
    """Build a settings dataclass from a JSON object, collecting problems instead of raising."""
    result = cls()
    if values is None:
        return result
    if not isinstance(values, dict):
        problems.append(f"{path or 'settings'}: expected an object, got {type(values).__name__}; using the defaults")
        return result
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        name = camel_to_snake(str(key))
        where = f"{path}.{key}" if path else str(key)
        if name not in known:
            problems.append(f"{where}: unknown setting (ignored)")
            continue
        kind, spec = hints[name], known[name]
        if dataclasses.is_dataclass(kind):
            setattr(result, name, parse_into(kind, value, where, problems))
            continue
        ok, converted = convert(value, kind)
        low, high = spec.metadata.get("range", (None, None))
        if ok and low is not None and not low <= converted <= high:
            ok = False
        if not ok:
            expected = describe(kind) + (f" from {low} to {high}" if low is not None else "")
            default = getattr(result, name)
            problems.append(f"{where}: expected {expected}, got {value!r}; using the default {default!r}")
            continue
        setattr(result, name, converted)
    return result


def parse_settings(values: Any, section: str = "codellama") -> tuple[Settings, list[str]]:
    """Settings from a client's JSON object, plus one message per rejected key or value."""
    problems: list[str] = []
    settings = parse_into(Settings, values, section, problems)
    if settings.model is not None and not settings.model.strip():
        settings.model = None  # editors' string settings default to "": the shipped model
    check_backend(settings.backend, f"{section}.backend", problems)
    return settings, problems


def check_backend(backend: BackendSettings, where: str, problems: list[str]) -> None:
    """Blank strings are unset (editors' defaults); a bad URL or key variable is refused, so
    nothing is sent anywhere the user did not clearly ask for."""
    for name in ("url", "api_key_env", "model"):
        value = getattr(backend, name)
        if value is not None and not value.strip():
            setattr(backend, name, None)
    if backend.url is not None and not backend.url.startswith(("http://", "https://")):
        problems.append(f"{where}.url: expected http://HOST:PORT or https://HOST:PORT, got {backend.url!r}; not used")
        backend.url = None
    if backend.api_key_env is not None and not ENV_NAME.fullmatch(backend.api_key_env):
        problems.append(
            f"{where}.apiKeyEnv: expected the name of an environment variable (the key itself never goes in "
            "settings); ignored"
        )
        backend.api_key_env = None


def with_overrides(base: Settings, values: Any, section: str = "codellama") -> tuple[Settings, list[str]]:
    """Like parse_settings, but keys the client leaves out keep `base`'s values (the command line's)."""
    if values is not None and not isinstance(values, dict):
        return base, [f"{section}: expected an object, got {type(values).__name__}; settings unchanged"]
    merged = to_json(base)
    deep_update(merged, values or {})
    return parse_settings(merged, section)


def deep_update(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def to_json(settings: Any) -> dict[str, Any]:
    """The camelCase JSON object for a settings dataclass (what a client would send)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[snake_to_camel(f.name)] = to_json(value) if dataclasses.is_dataclass(value) else value
    return out
