"""`export`: merged LoRA = base + adapter; PEFT adapters work in HF transformers; the
exported folders load in the engine and infill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from engine.checkpoints import hf_config, load_model
from tests.training.helpers import tiny_fit_config
from training import checkpointing as ckpt
from training.cli import main
from training.export import rebuild_trained_model
from training.fit import train

TOKENS = torch.tensor([[1, 5, 17, 300, 42, 999, 7, 8, 250, 3, 3, 600]])


@pytest.fixture(scope="module")
def lora_run(corpus, tiny_checkpoint, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora-run")
    config = tiny_fit_config(
        corpus,
        run,
        model={"base": str(tiny_checkpoint)},
        train={"method": "lora", "max_steps": 3, "lr": 2e-2},
        lora={"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["q_proj", "v_proj", "o_proj", "down_proj"]},
        eval={"fim_examples": 0},
    )
    train(config)
    return run


@torch.no_grad()
def logits_of(model) -> torch.Tensor:
    return model(TOKENS).float()


def hf_llama(path: Path) -> LlamaForCausalLM:
    """The same weights in transformers' LlamaForCausalLM (our parameter names are its names)."""
    model, _, info = load_model(path, device="cpu", dtype="float32")
    config = LlamaConfig(**hf_config(info.args))
    hf = LlamaForCausalLM(config).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def test_merged_export_gives_the_logits_of_base_plus_adapter(lora_run, tiny_checkpoint, tmp_path, capsys):
    adapted, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(lora_run))
    expected = logits_of(adapted)
    base = logits_of(load_model(tiny_checkpoint, dtype="float32")[0])
    assert (expected - base).abs().max() > 1e-3  # the adapters changed the model

    out = tmp_path / "merged"
    assert main(["export", "--run", str(lora_run), "--out", str(out)]) == 0
    assert f"codellama-lsp --model {out}" in capsys.readouterr().out
    merged, tok, info = load_model(out, dtype="float32")
    assert info.format == "native" and json.loads((out / "model_args.json").read_text())["training"]["method"] == "lora"
    torch.testing.assert_close(logits_of(merged), expected, atol=2e-5, rtol=1e-5)
    assert tok.can_infill


def test_peft_adapter_works_in_transformers(lora_run, tiny_checkpoint, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", "--run", str(lora_run), "--format", "peft", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert sorted(config["target_modules"]) == ["down_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(tiny_checkpoint)
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in keys)

    hf_adapted = PeftModel.from_pretrained(hf_llama(tiny_checkpoint), str(out)).eval()
    with torch.no_grad():
        hf_logits = hf_adapted(input_ids=TOKENS).logits
    adapted, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(lora_run))
    torch.testing.assert_close(hf_logits, logits_of(adapted), atol=1e-4, rtol=1e-4)


def test_full_fine_tune_exports_in_bf16_and_int8(corpus, tiny_checkpoint, tmp_path):
    run = tmp_path / "full"
    train(tiny_fit_config(corpus, run, model={"base": str(tiny_checkpoint)}, train={"method": "full", "max_steps": 2}))
    trained, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(run))

    assert main(["export", "--run", str(run), "--out", str(tmp_path / "fp32")]) == 0
    torch.testing.assert_close(logits_of(load_model(tmp_path / "fp32")[0]), logits_of(trained), atol=0, rtol=0)

    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    bf16, _, _ = load_model(tmp_path / "bf16", dtype="bfloat16")
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(logits_of(bf16), logits_of(trained), atol=0.15, rtol=0.05)

    assert main(["export", "--run", str(run), "--out", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    int8, _, info = load_model(tmp_path / "int8")
    assert info.quantization == "int8"
    assert torch.isfinite(logits_of(int8)).all()

    assert main(["export", "--run", str(run), "--format", "peft", "--out", str(tmp_path / "x")]) == 1


def test_export_without_checkpoints_says_so(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "no checkpoints/step-NNNNNNNN folder" in capsys.readouterr().err


def test_hf_and_gguf_exports_of_a_fine_tune_are_the_merged_model(lora_run, tmp_path, capsys):
    adapted, _, _, _ = rebuild_trained_model(ckpt.latest_checkpoint(lora_run))
    expected = logits_of(adapted)
    assert main(["export", "--run", str(lora_run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert f"vllm serve {tmp_path / 'hf'}" in capsys.readouterr().out
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, expected, atol=2e-5, rtol=1e-5)

    assert main(["export", "--run", str(lora_run), "--format", "gguf", "--out", str(tmp_path / "model.gguf")]) == 0
    assert "llama-server -m" in capsys.readouterr().out
    import gguf

    names = {t.name for t in gguf.GGUFReader(tmp_path / "model.gguf").tensors}
    assert "blk.0.attn_q.weight" in names and "output.weight" in names
