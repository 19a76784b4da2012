"""Export for other engines: Hugging Face (transformers / vLLM) and GGUF (llama.cpp).

transformers is the oracle for the HF folder; gguf's own reader (llama.cpp's package) for
the GGUF file. That llama.cpp serves it identically is tests/lsp/test_llama_server.py's job.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from engine.checkpoints import load_model
from engine.export import export_model
from engine.formats.common import CheckpointError
from engine.formats.gguf import gguf_name, to_interleaved_rope
from engine.model import KVCache
from lsp.cli import main as lsp_main


def our_logits(model, ids: list[int]) -> torch.Tensor:
    cache = KVCache(model.args, 64, 1, "cpu", torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids]), 0, cache, 0)[0]


def test_hf_export_loads_in_transformers_with_equal_logits(tiny_checkpoint, tokenizer, tmp_path):
    from transformers import LlamaForCausalLM, LlamaTokenizer

    assert lsp_main(["convert", "--model", str(tiny_checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    model, _, _ = load_model(tiny_checkpoint, "cpu", "float32")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = tokenizer.encode("def add(a, b):\n    return a + b\n", bos=True)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, our_logits(model, ids), rtol=1e-5, atol=1e-5)
    # the tokenizer travels with it, and transformers reads it as the same SentencePiece model
    hf_tok = LlamaTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.convert_tokens_to_ids("▁<MID>") == tokenizer.middle_id
    assert hf_tok("x = 1")["input_ids"] == tokenizer.encode("x = 1", bos=True)


def read_gguf(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field for name, field in reader.fields.items()}

    def scalar(key):
        field = fields[key]
        return field.parts[field.data[0]][0]

    return reader, {t.name: t for t in reader.tensors}, scalar


@pytest.mark.parametrize("file_type, quantize", [("float32", "none"), ("bfloat16", "none"), ("float32", "int8")])
def test_gguf_export_has_llama_tensors_and_the_infilling_tokens(
    tiny_checkpoint, tokenizer, tmp_path, file_type, quantize
):
    out = tmp_path / "model.gguf"
    argv = ["convert", "--model", str(tiny_checkpoint), "--format", "gguf", "--out", str(out)]
    assert lsp_main([*argv, "--dtype", file_type, "--quantize", quantize]) == 0
    model, _, _ = load_model(tiny_checkpoint, "cpu", "float32")
    reader, tensors, scalar = read_gguf(out)

    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    assert scalar("llama.block_count") == model.args.n_layers
    assert scalar("llama.attention.head_count_kv") == model.args.n_kv_heads
    assert scalar("llama.rope.freq_base") == pytest.approx(model.args.rope_theta)
    for key, token in [("fim_pre", tokenizer.prefix_id), ("fim_suf", tokenizer.suffix_id),
                       ("fim_mid", tokenizer.middle_id), ("eot", tokenizer.eot_id)]:  # fmt: skip
        assert scalar(f"tokenizer.ggml.{key}_token_id") == token
    pieces = reader.fields["tokenizer.ggml.tokens"]
    assert bytes(pieces.parts[pieces.data[tokenizer.middle_id]]).decode() == "▁<MID>"
    types = reader.fields["tokenizer.ggml.token_type"]
    assert types.parts[types.data[tokenizer.eot_id]][0] == gguf.TokenType.CONTROL

    state = model.state_dict()
    assert set(tensors) == {gguf_name(name) for name in state}
    expected_type = {"float32": gguf.GGMLQuantizationType.F32, "bfloat16": gguf.GGMLQuantizationType.BF16}
    matrix_type = gguf.GGMLQuantizationType.Q8_0 if quantize == "int8" else expected_type[file_type]
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == matrix_type
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    if file_type == "float32" and quantize == "none":
        # values exact; q/k rows in Meta's interleaved RoPE order, the rest untouched
        k = np.asarray(tensors["blk.1.attn_k.weight"].data)
        expected_k = to_interleaved_rope(state["model.layers.1.self_attn.k_proj.weight"], model.args.n_kv_heads)
        np.testing.assert_array_equal(k, expected_k.numpy())
        np.testing.assert_array_equal(np.asarray(tensors["output.weight"].data), state["lm_head.weight"].numpy())


def test_interleaved_rope_is_meta_order():
    # one head of 4 rows (2 pairs): rotate-half order [a0 a1 b0 b1] -> interleaved [a0 b0 a1 b1]
    weight = torch.arange(8.0).reshape(4, 2)
    assert to_interleaved_rope(weight, 1)[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]


def test_quantized_models_and_bad_requests_are_refused(tiny_checkpoint, tmp_path):
    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu", "float32", quantize="int8")
    with pytest.raises(CheckpointError, match="already quantized"):
        export_model(model, tokenizer.path, tmp_path / "x.gguf", "gguf")
    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu", "float32")
    with pytest.raises(ValueError, match="llama-quantize"):
        export_model(model, tokenizer.path, tmp_path / "x.gguf", "gguf", quantize="int4")
    with pytest.raises(ValueError, match="drop --quantize"):
        export_model(model, tokenizer.path, tmp_path / "hf", "hf", quantize="int8")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        export_model(model, tokenizer.path, tmp_path / "precious", "hf")
