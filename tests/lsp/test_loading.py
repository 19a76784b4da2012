"""The server's model loading: the KV cache is sized by the settings but never past what the
model was trained on, and budgets beyond it are scaled down and reported."""

from __future__ import annotations

from lsp.loading import ModelSpec, load, prompt_budget_problem, usable_lengths
from lsp.settings import PromptSettings, Settings


def test_the_cache_never_outgrows_the_trained_length(scripted_checkpoint):
    huge = Settings(
        max_tokens=2048, prompt=PromptSettings(prefix_tokens=16384, suffix_tokens=16384, context_tokens=16384)
    )
    spec = ModelSpec.from_settings(huge)
    assert spec.max_seq_len > 50_000  # what the settings alone would ask for
    loaded = load(ModelSpec(str(scripted_checkpoint), "cpu", max_seq_len=spec.max_seq_len))
    trained = loaded.engine.model.args.max_seq_len
    assert loaded.engine.max_seq_len == trained == 1024
    new_tokens, prompt_tokens = usable_lengths(huge, loaded.engine)
    assert new_tokens == 512 and new_tokens + prompt_tokens <= trained
    problem = prompt_budget_problem(huge, loaded.engine)
    assert problem and "trained on 1,024 positions" in problem and "49,152" in problem
    small = Settings(max_tokens=32, prompt=PromptSettings(prefix_tokens=256, suffix_tokens=64, context_tokens=64))
    assert prompt_budget_problem(small, loaded.engine) is None
