"""GGUF files for llama.cpp (its server, llama-bench), written with the `gguf` package that
llama.cpp maintains.

One file holds the hyperparameters, the SentencePiece vocabulary (pieces, scores, types,
the BOS/EOS ids and Code Llama's infilling ids) and the tensors under llama.cpp's names.
Two things differ from our layout, as in llama.cpp's own `convert_hf_to_gguf.py`:
- llama.cpp's "llama" architecture rotates interleaved pairs (Meta's RoPE), not halves
  (Hugging Face's), so the rows of wq and wk are permuted back to Meta's order;
- 1-D tensors (the norms) stay float32 whatever the file type.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.formats.common import CheckpointError, current_umask
from engine.model import ModelArgs, Transformer
from engine.tokenizer import Tokenizer

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
"""What `--format gguf` writes: full precision, or llama.cpp's 8-bit blocks (Q8_0)."""

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(name: str) -> str:
    """llama.cpp's name for one of our (LlamaForCausalLM) tensor names."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, _, index, rest = name.split(".", 3)  # model.layers.N.rest
    return f"blk.{index}.{LAYER_NAMES[rest]}"


def to_interleaved_rope(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from rotate-half order (per head: all first halves, then all
    second halves) to Meta's interleaved pairs, which llama.cpp's llama RoPE expects."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def vocabulary(tok: Tokenizer, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, token types) for the GGUF vocabulary, padded to the model's embeddings.

    The infilling pieces are marked as control tokens, as llama.cpp marks Code Llama's: they
    are never produced by tokenizing text, and <EOT> ends generation."""
    import gguf

    kinds = gguf.TokenType
    pieces = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [kinds.UNUSED] * vocab_size
    fim = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    sp = tok.sp
    for i in range(min(tok.vocab_size, vocab_size)):
        pieces[i], scores[i] = sp.id_to_piece(i).encode("utf-8"), sp.get_score(i)
        if sp.is_unknown(i):
            types[i] = kinds.UNKNOWN
        elif sp.is_control(i) or i in fim:
            types[i] = kinds.CONTROL
        elif sp.is_unused(i):
            types[i] = kinds.UNUSED
        elif sp.is_byte(i):
            types[i] = kinds.BYTE
        else:
            types[i] = kinds.NORMAL
    return pieces, scores, [int(t) for t in types]


def save_gguf(out: Path, model: Transformer, tokenizer_path: Path, file_type: str = "f32") -> Path:
    """Write one .gguf file (atomically) that llama.cpp loads; file_type is one of GGUF_TYPES."""
    import gguf

    if file_type not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {file_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    out = Path(out)
    args: ModelArgs = model.args
    tok = Tokenizer(tokenizer_path)
    tok.require_infilling()
    quant = gguf.GGMLQuantizationType
    matrix_type = {"f32": quant.F32, "f16": quant.F16, "bf16": quant.BF16, "q8_0": quant.Q8_0}[file_type]
    kinds = gguf.LlamaFileType
    ftype = {"f32": kinds.ALL_F32, "f16": kinds.MOSTLY_F16, "bf16": kinds.MOSTLY_BF16, "q8_0": kinds.MOSTLY_Q8_0}

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(staging, "llama")
        writer.add_name(out.stem)
        writer.add_context_length(args.max_seq_len)
        writer.add_embedding_length(args.dim)
        writer.add_block_count(args.n_layers)
        writer.add_feed_forward_length(args.hidden_dim)
        writer.add_head_count(args.n_heads)
        writer.add_head_count_kv(args.n_kv_heads or args.n_heads)
        writer.add_rope_dimension_count(args.head_dim)
        writer.add_rope_freq_base(args.rope_theta)
        writer.add_layer_norm_rms_eps(args.norm_eps)
        writer.add_vocab_size(args.vocab_size)
        writer.add_file_type(int(ftype[file_type]))

        pieces, scores, types = vocabulary(tok, args.vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(pieces)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(tok.bos_id)
        writer.add_eos_token_id(tok.eos_id)
        writer.add_unk_token_id(tok.sp.unk_id())
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        keys = gguf.Keys.Tokenizer
        for key, token in ((keys.FIM_PRE_ID, tok.prefix_id), (keys.FIM_SUF_ID, tok.suffix_id),
                           (keys.FIM_MID_ID, tok.middle_id), (keys.EOT_ID, tok.eot_id)):  # fmt: skip
            writer.add_uint32(key, token)

        kv_heads = args.n_kv_heads or args.n_heads
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                raise CheckpointError(f"{name}: quantized; GGUF is written from the full-precision model")
            weight = tensor.detach().to("cpu", torch.float32)
            if name.endswith("q_proj.weight"):
                weight = to_interleaved_rope(weight, args.n_heads)
            elif name.endswith("k_proj.weight"):
                weight = to_interleaved_rope(weight, kv_heads)
            data = weight.numpy()
            if data.ndim == 1 or matrix_type == quant.F32:
                writer.add_tensor(gguf_name(name), data)
            elif matrix_type == quant.F16:
                writer.add_tensor(gguf_name(name), data.astype(np.float16))
            else:
                writer.add_tensor(gguf_name(name), gguf.quants.quantize(data, matrix_type), raw_dtype=matrix_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(staging, 0o666 & ~current_umask())
        os.replace(staging, out)
    finally:
        Path(staging).unlink(missing_ok=True)
    return out
