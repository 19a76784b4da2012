"""The Llama 2 / Code Llama transformer, in Hugging Face's parameter layout.

One internal layout for every checkpoint: module names equal `LlamaForCausalLM`'s
(`model.layers.N.self_attn.q_proj.weight`, ...) and RoPE uses the rotate-half
convention, so Hugging Face safetensors load with no conversion, LoRA adapters export in
PEFT's format, and Meta checkpoints are converted once, in `engine.checkpoints`.

Inference runs against a static, preallocated `KVCache`; positions are passed
explicitly (`start_pos`) and the causal mask is right for a prefill that starts at any
position, which is what KV-cache reuse across keystrokes needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.huge_pages import huge_page_zeros


@dataclass
class ModelArgs:
    """Shape of a Llama-architecture model (field names follow Meta's `params.json`)."""

    dim: int = 4096
    """Width of the residual stream."""
    n_layers: int = 32
    """Number of transformer blocks."""
    n_heads: int = 32
    """Query heads per attention layer."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None means n_heads (multi-head)."""
    vocab_size: int = 32016
    """Rows of the embedding and of the output layer."""
    multiple_of: int = 256
    """The FFN width is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Scales the FFN width before rounding (34B uses 1.0)."""
    hidden_dim: int | None = None
    """FFN width; None derives it from dim, ffn_dim_multiplier and multiple_of."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 1_000_000.0
    """RoPE base period: 1e6 for Code Llama (10,000 for Llama 2)."""
    max_seq_len: int = 16384
    """Longest sequence the model was trained on (a hint for cache sizes, not a limit)."""
    tie_embeddings: bool = False
    """Share the embedding matrix with the output layer (small models only)."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            hidden = int(2 * 4 * self.dim / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.hidden_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelArgs:
        """Build from a dict, rejecting unknown keys so typos in a config don't go unnoticed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelArgs field(s): {', '.join(unknown)}")
        return cls(**values)


MODEL_CONFIGS: dict[str, ModelArgs] = {
    "7B": ModelArgs(dim=4096, n_layers=32, n_heads=32),
    "13B": ModelArgs(dim=5120, n_layers=40, n_heads=40),
    # 34B has no infilling tokens: its vocabulary is Llama 2's 32,000.
    "34B": ModelArgs(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.0, vocab_size=32000),
    # 7B-sized layers, but only two of them: the benchmark model that fits this CPU.
    "7B-2layer": ModelArgs(dim=4096, n_layers=2, n_heads=32),
}


class KVCache:
    """Preallocated keys and values for `slots` independent sequences.

    Each slot holds one sequence (e.g. one document's last prompt), so switching between
    two files keeps both caches warm. Shapes: (slots, n_kv_heads, max_seq_len, head_dim)
    per layer.
    """

    def __init__(
        self,
        args: ModelArgs,
        max_seq_len: int,
        slots: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (slots, args.n_kv_heads, max_seq_len, args.head_dim)
        self.max_seq_len = max_seq_len
        self.slots = slots
        # (on the CPU in huge-page memory where it can be: engine.huge_pages)
        self.keys = [huge_page_zeros(shape, device, dtype) for _ in range(args.n_layers)]
        self.values = [huge_page_zeros(shape, device, dtype) for _ in range(args.n_layers)]

    def update(
        self, layer: int, slot: int, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (1, n_kv_heads, T, head_dim) at start_pos; return all keys/values so far."""
        end = start_pos + k.shape[2]
        self.keys[layer][slot, :, start_pos:end] = k[0]
        self.values[layer][slot, :, start_pos:end] = v[0]
        return self.keys[layer][slot : slot + 1, :, :end], self.values[layer][slot : slot + 1, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and scale in the input dtype, as the reference does.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_frequencies(head_dim: int, theta: float, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (length, head_dim) for rotate-half RoPE, computed in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, head_dim) by position; cos/sin are (T, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        slot: int,
        start_pos: int,
        mask: torch.Tensor | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """The attention output (B, T, dim), or with `last_only` the last position's alone (B, 1, dim):
        every position's keys and values are still computed (and cached), the other queries not."""
        B = x.shape[0]
        q, k, v = self.project(x, cos, sin, last_only)
        if cache is not None:
            k, v = cache.update(self.layer_id, slot, start_pos, k, v)  # (1, KVH, start_pos + T, hd)
        if last_only:
            mask = None  # the last query sees every key
        # Without a cache the sequence starts at 0, so SDPA's top-left causal mask is right;
        # with one, `mask` aligns queries to their absolute positions.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=cache is None and q.shape[2] > 1,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, q.shape[2], -1))

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, last_query_only: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """q (B, H, T, hd), k and v (B, KVH, T, hd) for x (B, T, dim), RoPE applied to q and k
        (q for the last position only, (B, H, 1, hd), with `last_query_only`)."""
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if last_query_only:
            x, q_cos, q_sin = x[:, -1:], cos[-1:], sin[-1:]
        else:
            q_cos, q_sin = cos, sin
        q = self.q_proj(x).view(B, x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, q_cos, q_sin), apply_rope(k, cos, sin), v

    def decode_static(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
        keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """One token x (1, 1, dim) at position pos (a 1-element tensor) against a slot's whole
        cache keys/values (1, KVH, L, hd), positions where `visible` (L,) is true.

        Fixed shapes at every position: what a compiled graph needs. Attention is written out
        for inductor to fuse: inside the compiled step, SDPA's CPU flash kernel took 290 us a
        layer at one query over the shipped model's 1,024-position cache (profiled)."""
        q, k, v = self.project(x, cos, sin)
        keys.index_copy_(2, pos, k)
        values.index_copy_(2, pos, v)
        group = self.n_heads // self.n_kv_heads  # query heads per key/value head
        q = q.view(1, self.n_kv_heads, group, self.head_dim)
        scores = (q @ keys.transpose(-1, -2)) * self.head_dim**-0.5  # (1, KVH, group, L)
        scores = scores.float().masked_fill(~visible, float("-inf"))
        y = torch.softmax(scores, dim=-1).to(values.dtype) @ values  # (1, KVH, group, hd)
        return self.o_proj(y.reshape(1, 1, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.self_attn = Attention(args, layer_id)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, cache, slot, start_pos, mask, last_only: bool = False) -> torch.Tensor:
        """The layer's output (B, T, dim), or with `last_only` the last position's (B, 1, dim): the
        keys and values of every position still go into the cache."""
        attended = self.self_attn(self.input_layernorm(x), cos, sin, cache, slot, start_pos, mask, last_only)
        h = (x[:, -1:] if last_only else x) + attended
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """The body: embeddings, blocks and final norm (`model.*` in HF names)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)


class Transformer(nn.Module):
    """Llama / Code Llama causal LM with `LlamaForCausalLM`'s state-dict names."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        self.reset_rope(args.max_seq_len)

    def reset_rope(self, length: int, device: torch.device | str | None = None) -> None:
        """(Re)compute the RoPE tables, e.g. after loading weights built on the meta device."""
        # (Not lm_head.weight: a quantized output layer has none.)
        device = device if device is not None else self.model.embed_tokens.weight.device
        if torch.device(device).type == "meta":
            device = "cpu"
        cos, sin = rope_frequencies(self.args.head_dim, self.args.rope_theta, length, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        slot: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T) at positions start_pos.. (B must be 1 with a cache).

        `last_only` computes the logits of the last position only, (B, 1, vocab): a prefill needs
        nothing else. That saves a vocab-sized matmul per token, and in the last layer everything
        but the keys and values (which the cache keeps) for every position but the last: its
        queries, attention, output projection and MLP. (llama.cpp skips the same MLP rows.)
        """
        B, T = tokens.shape
        end = start_pos + T
        if end > self.rope_cos.shape[0]:
            self.reset_rope(max(end, 2 * self.rope_cos.shape[0]))
        cos, sin = self.rope_cos[start_pos:end], self.rope_sin[start_pos:end]
        mask = None
        if cache is not None:
            if B != 1:
                raise ValueError("the KV cache holds one sequence per slot: batch size must be 1")
            if end > cache.max_seq_len:
                raise ValueError(f"position {end} is past the KV cache length {cache.max_seq_len}")
            if T > 1:
                # Query i sits at absolute position start_pos + i and sees keys 0..start_pos + i.
                mask = torch.ones(T, end, dtype=torch.bool, device=tokens.device).tril(diagonal=start_pos)
        h = self.model.embed_tokens(tokens)
        last_layer = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            pruned = last_only and i == last_layer
            if self.gradient_checkpointing and self.training:
                h = checkpoint(layer, h, cos, sin, cache, slot, start_pos, mask, pruned, use_reentrant=False)
            else:
                h = layer(h, cos, sin, cache, slot, start_pos, mask, pruned)
        if last_only and not self.model.layers:
            h = h[:, -1:]
        return self.lm_head(self.model.norm(h))

    def decode_static(
        self, token: torch.Tensor, pos: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
    ) -> torch.Tensor:
        """Logits (vocab,) after token (1, 1) at position pos (1,), written into one slot's cache
        (keys/values: per layer (1, KVH, L, hd), views of a KVCache's slot).

        The same math as forward() for one token, but every shape is fixed whatever the
        position, so torch.compile makes one graph of it that typing never recompiles
        (engine.compiled); the cache must already be sized for RoPE (reset_rope)."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        visible = torch.arange(keys[0].shape[2], device=pos.device) <= pos
        h = self.model.embed_tokens(token)
        for layer, layer_keys, layer_values in zip(self.model.layers, keys, values, strict=True):
            x = layer.input_layernorm(h)
            h = h + layer.self_attn.decode_static(x, cos, sin, pos, layer_keys, layer_values, visible)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.model.norm(h))[0, -1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
