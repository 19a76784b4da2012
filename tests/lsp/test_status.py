from __future__ import annotations

import re
from pathlib import Path

from engine.generate import GenerationStats
from lsp.settings import Settings, to_json
from lsp.status import Status, percentile

PROTOCOL = Path(__file__).parents[2] / "lsp" / "PROTOCOL.md"


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0


def test_generations_are_counted():
    status = Status()
    status.record_generation(GenerationStats(prompt_tokens=100, reused_tokens=90, prefilled_tokens=10,
                                             generated_tokens=5))  # fmt: skip
    status.record_generation(GenerationStats(prompt_tokens=100, reused_tokens=3, prefilled_tokens=97,
                                             generated_tokens=1))  # fmt: skip
    status.latencies_ms.extend([10.0, 30.0, 20.0])
    payload = status.to_json()
    assert (payload["cacheHits"], payload["tokensPrefilled"], payload["tokensGenerated"]) == (1, 107, 6)
    assert payload["latencyMs"] == {"last": 20.0, "p50": 20.0, "p95": 30.0}


def test_status_has_every_field_the_protocol_promises():
    text = PROTOCOL.read_text(encoding="utf-8")
    start = text.index("`codellama/status` request")
    section = text[start : text.index("`codellama/didChangeStatus` notification", start)]
    promised = set(re.findall(r'"(\w+)":', section))
    payload = Status().to_json()
    assert {"state", "requests", "latencyMs", "version"} <= promised
    assert promised <= set(payload) | set(payload["latencyMs"])


def test_settings_keys_are_documented():
    text = PROTOCOL.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([\w.]+)` \|", text, flags=re.MULTILINE))

    def keys(values: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in values.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    assert keys(to_json(Settings())) == documented
