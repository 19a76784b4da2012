from __future__ import annotations

import typing

import pytest

from engine.options import InfillFormat, Quantization
from engine.prompts import INFILL_FORMATS
from engine.quantize import QUANTIZATIONS
from lsp.settings import (
    PromptSettings,
    Settings,
    camel_to_snake,
    parse_settings,
    snake_to_camel,
    to_json,
    with_overrides,
)


def test_choices_match_the_engine():
    # One list each (engine/options.py), which the settings, the engine and the CLI all use.
    assert set(typing.get_args(Quantization)) == set(QUANTIZATIONS)
    assert set(typing.get_args(InfillFormat)) == set(INFILL_FORMATS)


def test_protocol_keys_parse_in_camel_case():
    settings, problems = parse_settings(
        {
            "enable": False,
            "model": "/models/codellama-7b",
            "device": "cpu",
            "quantize": "int8",
            "maxTokens": 64,
            "temperature": 0.2,
            "multiline": "never",
            "timeBudgetMs": 500,
            "prompt": {"prefixTokens": 2048, "suffixTokens": 512, "contextFiles": 0, "format": "psm"},
        }
    )
    assert problems == []
    assert settings == Settings(
        enable=False,
        model="/models/codellama-7b",
        device="cpu",
        quantize="int8",
        max_tokens=64,
        temperature=0.2,
        multiline="never",
        time_budget_ms=500,
        prompt=PromptSettings(prefix_tokens=2048, suffix_tokens=512, context_files=0, format="psm"),
    )


def test_round_trip_through_json():
    settings = Settings(max_tokens=7, prompt=PromptSettings(context_tokens=9))
    assert parse_settings(to_json(settings)) == (settings, [])
    assert to_json(Settings())["maxTokens"] == 128 and "timeBudgetMs" in to_json(Settings())


@pytest.mark.parametrize(
    ("values", "field", "default"),
    [
        ({"maxTokens": "lots"}, "codellama.maxTokens", 128),
        ({"maxTokens": 0}, "codellama.maxTokens", 128),
        ({"maxTokens": 3.5}, "codellama.maxTokens", 128),
        ({"maxTokens": True}, "codellama.maxTokens", 128),
        ({"temperature": float("nan")}, "codellama.temperature", 0.0),
        ({"enable": "yes"}, "codellama.enable", True),
        ({"quantize": "int3"}, "codellama.quantize", "none"),
        ({"model": 42}, "codellama.model", None),
        ({"prompt": {"prefixTokens": -5}}, "codellama.prompt.prefixTokens", 1024),
    ],
)
def test_bad_values_fall_back_to_the_default_with_a_message(values, field, default):
    settings, [problem] = parse_settings(values)
    assert problem.startswith(field) and repr(default) in problem
    assert settings == Settings()


def test_unknown_keys_and_non_objects_are_reported():
    _, problems = parse_settings({"maxTokenz": 5, "prompt": "long"})
    assert problems == [
        "codellama.maxTokenz: unknown setting (ignored)",
        "codellama.prompt: expected an object, got str; using the defaults",
    ]
    assert parse_settings(None) == (Settings(), [])
    assert parse_settings([1, 2])[1] == ["codellama: expected an object, got list; using the defaults"]


def test_an_empty_model_string_means_the_shipped_model():
    assert parse_settings({"model": ""})[0].model is None
    assert parse_settings({"model": None})[0].model is None


def test_client_settings_override_the_command_line():
    base = Settings(model="/cli/model", quantize="int8")
    settings, problems = with_overrides(base, {"maxTokens": 5})
    assert (settings.model, settings.quantize, settings.max_tokens, problems) == ("/cli/model", "int8", 5, [])
    assert with_overrides(base, {"model": "/other"})[0].model == "/other"
    assert with_overrides(base, None)[0] == base
    assert with_overrides(base, "nonsense") == (base, ["codellama: expected an object, got str; settings unchanged"])


def test_name_conversion():
    assert camel_to_snake("timeBudgetMs") == "time_budget_ms"
    assert snake_to_camel("time_budget_ms") == "timeBudgetMs"
    assert camel_to_snake("enable") == "enable"
