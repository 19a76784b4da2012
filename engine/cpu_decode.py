"""The CPU decode step in C (engine/cpu_decode.c): built once per machine, called through ctypes.

torch.compile's CPU step (engine.compiled) made one fused kernel of the whole token, but on the
shipped model it still cost 2.6 ms a token on a 2-core EPYC, where llama.cpp needs 1.1-1.3:
its loops recompute their inputs, reduce horizontally at every output, attend over the whole
static cache, and run about a hundred OpenMP barriers and serial sections a token, and the call
itself (guards, wrapper) cost another 0.6 ms. cpu_decode.c is the token written out for one row:
a dot-product kernel per weight format, attention over the filled positions only, five
barriers a layer, one C call per token.

It is compiled with this machine's C compiler into the private cache (engine.c_library), so a
restart loads it at once. Where there is no compiler, or the model has a layer it does not know
(a LoRA adapter, a bias, bitsandbytes), the engine keeps its other steps.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_float, c_int32, c_int64, c_void_p

import torch
from torch import nn

from engine import c_library
from engine.cpu_linear import Fp32CpuLinear, TiledFp32Linear
from engine.model import KVCache, Transformer
from engine.quantize import Int4Linear, Int8Linear

KINDS = {torch.float32: 0, torch.bfloat16: 1, "int8": 2, "int4": 3}
MAX_HEAD_DIM = 512
"""The widest head the C step was built and tested for (its scratch is sized by head_dim)."""
MAX_TOKENS = 16
"""Tokens one call computes at most (cpu_decode.c's scratch is sized for them)."""


class CLinear(ctypes.Structure):
    _fields_ = [
        ("kind", c_int32), ("out", c_int32), ("in_", c_int32), ("groupsize", c_int32),
        ("weight", c_void_p), ("scales", c_void_p),
    ]  # fmt: skip


LAYER_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class CLayer(ctypes.Structure):
    _fields_ = [*((name, CLinear) for name in LAYER_LINEARS), ("input_norm", c_void_p), ("post_norm", c_void_p)]


class CModel(ctypes.Structure):
    _fields_ = [
        ("n_layers", c_int32), ("dim", c_int32), ("n_heads", c_int32), ("n_kv_heads", c_int32),
        ("head_dim", c_int32), ("hidden", c_int32), ("vocab", c_int32), ("bf16", c_int32), ("eps", c_float),
        ("embed", c_void_p), ("norm", c_void_p), ("rope_cos", c_void_p), ("rope_sin", c_void_p),
        ("lm_head", CLinear), ("layers", POINTER(CLayer)), ("keys", POINTER(c_void_p)), ("values", POINTER(c_void_p)),
        ("cache_len", c_int64), ("scratch", c_void_p), ("threads", c_int32),
    ]  # fmt: skip


def load_library() -> ctypes.CDLL:
    """engine.c_library's library with the decode step's signatures (RuntimeError where it cannot be built)."""
    library = c_library.load_library()
    library.cpu_decode_tokens.argtypes = [POINTER(CModel), POINTER(c_int64), c_int32, c_int64, c_int64, c_void_p]
    library.cpu_decode_tokens.restype = None
    library.cpu_decode_scratch_floats.argtypes = [POINTER(CModel)]
    library.cpu_decode_scratch_floats.restype = ctypes.c_size_t
    return library


def layer_problem(layer: nn.Module, dtype: torch.dtype) -> str:
    """Why cpu_decode.c cannot run this linear layer ("" if it can)."""
    if isinstance(layer, Int8Linear):
        ok = layer.weight.is_contiguous() and layer.scales.dtype == torch.bfloat16
        return "" if ok else "an int8 layer not laid out as on CPU"
    if isinstance(layer, Int4Linear):
        if layer.scales_and_zeros.dtype != torch.bfloat16:
            return "an int4 layer not laid out as on CPU"
        return "" if layer.gemm_ok else "torch's int4 CPU pack has a layout this engine does not know"
    if isinstance(layer, TiledFp32Linear):
        return "" if dtype == torch.float32 else f"an fp32 layer in a {dtype} model"
    if type(layer) not in (nn.Linear, Fp32CpuLinear) or layer.bias is not None:
        return f"a {type(layer).__name__} layer (only plain, int8 and int4 linear layers)"
    if layer.weight.dtype != dtype or not layer.weight.is_contiguous():
        return f"a {layer.weight.dtype} weight in a {dtype} model"
    return ""


def unsupported(model: Transformer) -> str:
    """Why the C step cannot run this model ("" if it can)."""
    weight = model.model.embed_tokens.weight
    if weight.device.type != "cpu":
        return "not on the CPU"
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return f"{weight.dtype} weights (only float32 and bfloat16)"
    if model.args.head_dim > MAX_HEAD_DIM:
        return f"head_dim {model.args.head_dim} is over {MAX_HEAD_DIM}"
    vectors = [model.model.embed_tokens.weight, model.model.norm.weight] + [
        norm.weight for block in model.model.layers for norm in (block.input_layernorm, block.post_attention_layernorm)
    ]
    if any(v.dtype != weight.dtype or not v.is_contiguous() for v in vectors):
        return "an embedding or norm weight not in the model's dtype, or not contiguous"
    layers = [model.lm_head] + [
        linear for block in model.model.layers for linear in (*attention_linears(block), *mlp_linears(block))
    ]
    return next((problem for layer in layers if (problem := layer_problem(layer, weight.dtype))), "")


def attention_linears(block: nn.Module) -> tuple[nn.Module, ...]:
    attn = block.self_attn
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj


def mlp_linears(block: nn.Module) -> tuple[nn.Module, ...]:
    return block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj


class CpuDecode:
    """One decoded token through cpu_decode.c: logits (vocab,) float32 for the token after
    `token` at position pos, its keys/values written into the cache slot (CompiledDecode's call)."""

    name = "C"
    attends_whole_cache = False
    """Attention runs over the filled positions only (the torch.compile step's, over the whole cache)."""

    def __init__(self, model: Transformer) -> None:
        problem = unsupported(model)
        if problem:
            raise ValueError(f"the C decode step cannot run this model: {problem}")
        self.library = load_library()
        self.model = model
        self._keep: list[torch.Tensor] = []
        self._dtype = model.model.embed_tokens.weight.dtype
        bf16 = self._dtype == torch.bfloat16
        args = model.args
        blocks = list(model.model.layers)
        self._layers = (CLayer * len(blocks))()
        for slot, block in zip(self._layers, blocks, strict=True):
            for name, layer in zip(LAYER_LINEARS, (*attention_linears(block), *mlp_linears(block)), strict=True):
                setattr(slot, name, self._linear(layer))
            slot.input_norm = self._pointer(block.input_layernorm.weight)
            slot.post_norm = self._pointer(block.post_attention_layernorm.weight)
        self._base = dict(
            n_layers=args.n_layers, dim=args.dim, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
            head_dim=args.head_dim, hidden=args.hidden_dim, vocab=args.vocab_size, bf16=int(bf16),
            eps=args.norm_eps, embed=self._pointer(model.model.embed_tokens.weight),
            norm=self._pointer(model.model.norm.weight), lm_head=self._linear(model.lm_head),
            layers=self._layers,
        )  # fmt: skip
        self._plans: dict[int, tuple[CModel, tuple, int]] = {}
        """id(cache) -> (plan, what it points into, the threads its scratch is sized for)."""
        self._ids = (c_int64 * MAX_TOKENS)()

    def _pointer(self, t: torch.Tensor) -> int:
        self._keep.append(t)
        return t.data_ptr()

    def _linear(self, layer: nn.Module) -> CLinear:
        if isinstance(layer, Int8Linear):
            return CLinear(KINDS["int8"], layer.out_features, layer.in_features, 0,
                           self._pointer(layer.weight), self._pointer(layer.scales))  # fmt: skip
        if isinstance(layer, Int4Linear):
            return CLinear(KINDS["int4"], layer.out_features, layer.in_features, layer.groupsize,
                           self._pointer(layer.packed), self._pointer(layer.scales_and_zeros))  # fmt: skip
        if isinstance(layer, TiledFp32Linear):  # (groupsize: the width of its column tiles)
            return CLinear(KINDS[torch.float32], layer.out_features, layer.in_features, layer.tile,
                           self._pointer(layer.tiles), None)  # fmt: skip
        (out, width), weight = layer.weight.shape, layer.weight  # row-major: one tile as wide as the input
        return CLinear(KINDS[weight.dtype], out, width, width, self._pointer(weight), None)

    def _plan(self, cache: KVCache, threads: int) -> CModel:
        """The model with this cache's addresses, RoPE tables long enough and scratch memory for
        `threads` threads (each has a share of the scratch: more threads than it was sized for,
        after a torch.set_num_threads, get a new one rather than write past its end)."""
        key = id(cache)
        if key in self._plans and self._plans[key][2] < threads:
            del self._plans[key]
        if key not in self._plans:
            if cache.keys[0].dtype != self._dtype:
                raise ValueError(f"a {cache.keys[0].dtype} KV cache for a {self._dtype} model")
            if self.model.rope_cos.shape[0] < cache.max_seq_len:
                self.model.reset_rope(cache.max_seq_len)
            cos, sin = (t.float().contiguous() for t in (self.model.rope_cos, self.model.rope_sin))
            plan = CModel(
                **self._base, rope_cos=cos.data_ptr(), rope_sin=sin.data_ptr(),
                keys=(c_void_p * len(cache.keys))(*(k.data_ptr() for k in cache.keys)),
                values=(c_void_p * len(cache.values))(*(v.data_ptr() for v in cache.values)),
                cache_len=cache.max_seq_len, threads=threads,
            )  # fmt: skip
            scratch = torch.empty(self.library.cpu_decode_scratch_floats(ctypes.byref(plan)), dtype=torch.float32)
            plan.scratch = scratch.data_ptr()
            # What the plan points into lives as long as the plan: the cache, the tables, the scratch.
            self._plans[key] = (plan, (cache, cos, sin, scratch), threads)
        return self._plans[key][0]

    def forget(self, cache: KVCache) -> None:
        """Drop what was kept for a cache no longer used (so that its memory can be freed)."""
        self._plans.pop(id(cache), None)

    # (No inference_mode around these: the C call records nothing for autograd, and entering
    # the mode twice a token cost more than a tenth of the step's Python time.)
    def __call__(self, token: int, pos: int, cache: KVCache, slot: int) -> torch.Tensor:
        return self.verify([token], pos, cache, slot)[0]

    def verify(self, tokens: list[int], pos: int, cache: KVCache, slot: int) -> torch.Tensor:
        """Logits (len(tokens), vocab): row i predicts the token after tokens[i], which sits at
        pos + i (engine.generate.verify's call: a speculative draft checked in one pass, its
        weights read once for all its tokens)."""
        vocab = self.model.args.vocab_size
        if not tokens or not 0 <= pos <= pos + len(tokens) <= cache.max_seq_len or not 0 <= slot < cache.slots:
            raise ValueError(
                f"positions {pos}..{pos + len(tokens) - 1} / slot {slot} outside the KV cache "
                f"({cache.max_seq_len} positions x {cache.slots} slots)"
            )
        if not 0 <= min(tokens) <= max(tokens) < vocab:
            raise ValueError(f"a token outside the vocabulary of {vocab}: {tokens}")
        threads = max(1, torch.get_num_threads())
        plan = self._plan(cache, threads)
        plan.threads = threads  # (fewer than the scratch was sized for is fine)
        logits = torch.empty(len(tokens), vocab, dtype=torch.float32)
        for start in range(0, len(tokens), MAX_TOKENS):
            chunk = tokens[start : start + MAX_TOKENS]
            self._ids[: len(chunk)] = chunk
            out = logits.data_ptr() + start * vocab * 4  # row `start` (float32)
            self.library.cpu_decode_tokens(ctypes.byref(plan), self._ids, len(chunk), pos + start, slot, out)
        return logits
