"""Checkpoint formats: Hugging Face, Meta, and the project's own.

Every format becomes the one internal layout (`LlamaForCausalLM` names, rotate-half
RoPE) here and nowhere else:

- Hugging Face: config.json + model.safetensors or model-0000N-of-0000M.safetensors (+
  index), loaded as is.
- Meta: params.json + consolidated.NN.pth model-parallel shards, merged along the right
  dimension, renamed by one literal map, q/k permuted from interleaved to rotate-half.
- codellama-lsp: model_args.json + model.safetensors (full precision, or int8/int4 in
  the portable form of `engine.quantize`).

All three keep the SentencePiece `tokenizer.model` beside the weights. Nothing is ever
unpickled: .pth/.bin files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.model import ModelArgs, Transformer
from engine.quantize import (
    TORCH_QUANTIZATIONS,
    build_quantized_linear,
    check_quantization,
    quantize_state_dict,
    quantized_linear_names,
)
from engine.tokenizer import Tokenizer, TokenizerError

NATIVE_CONFIG = "model_args.json"
NATIVE_WEIGHTS = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
NATIVE_FORMAT_VERSION = 1
# Tensors some checkpoints carry that the model recomputes.
IGNORED_TENSORS = re.compile(r"(^rope\.freqs$|rotary_emb\.inv_freq$)")


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and the problem."""


@dataclass
class CheckpointInfo:
    path: Path
    format: str
    """"hf", "meta" or "native"."""
    args: ModelArgs
    tokenizer_path: Path
    quantization: str = "none"
    """For native checkpoints saved quantized: "int8" or "int4"."""


# ---- format detection and configs ----


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Identify a checkpoint folder and read its configuration (no weights are read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a folder (config + weights + {TOKENIZER_FILE})")
    tokenizer_path = path / TOKENIZER_FILE
    if (path / NATIVE_CONFIG).is_file():
        config = read_json(path / NATIVE_CONFIG)
        fmt, quantization = "native", config.get("quantization", "none")
        try:
            args = ModelArgs.from_dict(config["model_args"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path / NATIVE_CONFIG}: bad model_args: {e}") from e
        if quantization not in ("none", *TORCH_QUANTIZATIONS):
            raise CheckpointError(f"{path / NATIVE_CONFIG}: unknown quantization {quantization!r}")
    elif (path / "config.json").is_file():
        fmt, quantization = "hf", "none"
        args = args_from_hf_config(read_json(path / "config.json"), path / "config.json")
    elif (path / "params.json").is_file():
        fmt, quantization = "meta", "none"
        args = args_from_meta_params(read_json(path / "params.json"), path / "params.json", tokenizer_path)
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint folder: expected config.json (Hugging Face), params.json (Meta) "
            f"or {NATIVE_CONFIG} (codellama-lsp)"
        )
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{path}: no {TOKENIZER_FILE} (the SentencePiece tokenizer) beside the weights")
    return CheckpointInfo(path, fmt, args, tokenizer_path, quantization)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _require(config: dict, key: str, path: Path):
    if key not in config:
        raise CheckpointError(f"{path}: missing field {key!r}")
    return config[key]


def args_from_hf_config(config: dict, path: Path) -> ModelArgs:
    model_type = config.get("model_type")
    if model_type != "llama":
        raise CheckpointError(
            f"{path}: unsupported architecture: model_type {model_type!r}; expected a Llama / Code Llama "
            "checkpoint (model_type 'llama', LlamaForCausalLM)"
        )
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        raise CheckpointError(f"{path}: unsupported Llama variant (hidden_act other than silu, or biases)")
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise CheckpointError(f"{path}: rope_scaling {scaling!r} is not supported (Code Llama uses none)")
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    try:
        return ModelArgs(
            dim=_require(config, "hidden_size", path),
            n_layers=_require(config, "num_hidden_layers", path),
            n_heads=_require(config, "num_attention_heads", path),
            n_kv_heads=config.get("num_key_value_heads"),
            vocab_size=_require(config, "vocab_size", path),
            hidden_dim=_require(config, "intermediate_size", path),
            norm_eps=config.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            max_seq_len=config.get("max_position_embeddings", 16384),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def hf_config(args: ModelArgs) -> dict:
    """The inverse of args_from_hf_config: a Hugging Face LlamaConfig's fields."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
    }


def args_from_meta_params(params: dict, path: Path, tokenizer_path: Path) -> ModelArgs:
    vocab_size = params.get("vocab_size", -1)
    if vocab_size is None or vocab_size <= 0:
        # Code Llama's params.json may leave it out: the tokenizer knows (the embedding is
        # checked against it when the weights are read).
        try:
            vocab_size = Tokenizer(tokenizer_path).vocab_size
        except TokenizerError as e:
            raise CheckpointError(f"{path}: no vocab_size, and {e}") from e
    try:
        return ModelArgs(
            dim=_require(params, "dim", path),
            n_layers=_require(params, "n_layers", path),
            n_heads=_require(params, "n_heads", path),
            n_kv_heads=params.get("n_kv_heads"),
            vocab_size=vocab_size,
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=float(params.get("rope_theta", 10000.0)),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


# ---- reading tensors ----


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated or corrupt?") from e


PICKLE_PROTOCOL_MARK = 0x80
"""The first byte of a pickle (protocol 2 and later): a legacy, pre-zip torch.save file starts with it."""


def read_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.bin file, loaded with weights_only=True: tensors and containers, no code."""
    if not zipfile.is_zipfile(path):
        try:
            with path.open("rb") as f:
                first = f.read(1)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e}") from e
        if first and first[0] == PICKLE_PROTOCOL_MARK:
            raise CheckpointError(
                f"{path}: refusing to load: a legacy-format PyTorch file (a bare pickle, not the zip archive "
                "torch.save has written since torch 1.6). A bare pickle can run code while it loads, so it is "
                "never read here. If you trust where it came from, re-save it with a current torch or convert "
                "it to safetensors."
            )
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refusing to load: the file holds Python objects other than tensors "
            f"(torch.load(weights_only=True) blocked it: {str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read PyTorch file ({e}); is it truncated or corrupt?") from e
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return value


def hf_weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no weight_map")
            files = [path / name for name in sorted(set(weight_map.values()))]
            outside = [str(f) for f in files if not f.resolve().is_relative_to(path.resolve())]
            if outside:
                raise CheckpointError(f"{index}: weight files outside the checkpoint folder: {', '.join(outside)}")
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index}: weight file(s) missing: {', '.join(missing)}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise CheckpointError(
        f"{path}: no weights (model.safetensors, sharded safetensors with an index, or pytorch_model.bin)"
    )


def read_weight_files(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors(file) if file.suffix == ".safetensors" else read_pickled_tensors(file))
    return state


# One literal name map, Meta -> internal (Hugging Face) names; {} is the layer index.
META_TO_HF = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{}.attention.wq.weight": "model.layers.{}.self_attn.q_proj.weight",
    "layers.{}.attention.wk.weight": "model.layers.{}.self_attn.k_proj.weight",
    "layers.{}.attention.wv.weight": "model.layers.{}.self_attn.v_proj.weight",
    "layers.{}.attention.wo.weight": "model.layers.{}.self_attn.o_proj.weight",
    "layers.{}.feed_forward.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "layers.{}.feed_forward.w2.weight": "model.layers.{}.mlp.down_proj.weight",
    "layers.{}.feed_forward.w3.weight": "model.layers.{}.mlp.up_proj.weight",
    "layers.{}.attention_norm.weight": "model.layers.{}.input_layernorm.weight",
    "layers.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
}
# Dimension along which model-parallel shards split each Meta tensor; absent = replicated.
META_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def meta_to_hf_permutation(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from Meta's interleaved RoPE pairs to rotate-half halves."""
    rows, dim = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def read_meta_state(path: Path, args: ModelArgs) -> dict[str, torch.Tensor]:
    shards = sorted(path.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{path}: no consolidated.NN.pth weight shards beside params.json")
    loaded = [read_pickled_tensors(shard) for shard in shards]
    state = {}
    for name in loaded[0]:
        if IGNORED_TENSORS.search(name):
            continue
        parts = [shard.get(name) for shard in loaded]
        if any(p is None for p in parts):
            raise CheckpointError(f"{path}: tensor {name!r} is missing from some of the {len(shards)} shards")
        kind = name.split(".")[-2]
        dim = META_SHARD_DIM.get(kind)
        tensor = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
        generic = re.sub(r"^layers\.\d+\.", "layers.{}.", name)
        if generic not in META_TO_HF:
            raise CheckpointError(f"{shards[0]}: unexpected tensor {name!r}; is this a Llama checkpoint?")
        layer = re.match(r"^layers\.(\d+)\.", name)
        target = META_TO_HF[generic].format(layer.group(1) if layer else "")
        if kind == "wq":
            tensor = meta_to_hf_permutation(tensor, args.n_heads)
        elif kind == "wk":
            tensor = meta_to_hf_permutation(tensor, args.n_kv_heads)
        state[target] = tensor
    return state


def read_state_dict(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint in internal names (native quantized: portable form)."""
    if info.format == "meta":
        return read_meta_state(info.path, info.args)
    if info.format == "hf":
        state = read_weight_files(hf_weight_files(info.path))
    else:
        weights = info.path / NATIVE_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{info.path}: no {NATIVE_WEIGHTS}")
        state = read_safetensors(weights)
    return {k: v for k, v in state.items() if not IGNORED_TENSORS.search(k)}


def check_state_dict(info: CheckpointInfo, state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    """Raise a CheckpointError naming the first missing, unexpected or misshapen tensor."""
    source = info.path / (NATIVE_WEIGHTS if info.format == "native" else "")
    quantized = info.quantization != "none"
    if info.args.tie_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for name, shape in expected.items():
        if quantized and (name.endswith("proj.weight") or name == "lm_head.weight"):
            if name not in state or state[name].shape[0] != shape[0]:
                raise CheckpointError(f"{source}: quantized tensor {name!r} is missing or has the wrong shape")
            continue
        if name not in state:
            raise CheckpointError(f"{source}: tensor {name!r} is missing")
        if state[name].shape != shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {list(state[name].shape)}, but the config expects {list(shape)}"
            )
    allowed_extra = (".scales", ".scales_and_zeros") if quantized else ()
    unexpected = [k for k in state if k not in expected and not k.endswith(allowed_extra)]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]!r}; is this a Llama checkpoint?")


# ---- building the model ----


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to this torch build")
    return device


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device, args: ModelArgs) -> torch.dtype:
    """`auto`: bf16 on GPU; on CPU fp32 when its weights take under half the RAM, else bf16.

    This CPU has no bf16 matrix instructions: a bf16 prefill ran 3x slower than fp32, so
    fp32 wins wherever it fits. (Quantized layers compute in bf16 on CPU regardless.)
    """
    if name != "auto":
        if name not in TORCH_DTYPES:
            raise ValueError(f"unknown dtype {name!r}: expected auto or one of {', '.join(TORCH_DTYPES)}")
        return TORCH_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16
    layers = args.n_layers * (4 * args.dim * args.dim + 3 * args.dim * args.hidden_dim)
    n_params = layers + 2 * args.vocab_size * args.dim
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return torch.float32 if 4 * n_params < ram / 2 else torch.bfloat16


def build_model(
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
) -> Transformer:
    """Assemble a model from a checked state dict, quantizing its Linears if asked."""
    with torch.device("meta"):
        model = Transformer(args)
    if quantization != "none":
        names = quantized_linear_names(model)
        already = any(k.endswith((".scales", ".scales_and_zeros")) for k in state)
        if quantization in TORCH_QUANTIZATIONS and not already:
            state = quantize_state_dict(state, names, quantization)
        for name in names:
            tensors = {key.rsplit(".", 1)[1]: state.pop(key) for key in list(state) if key.rsplit(".", 1)[0] == name}
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, build_quantized_linear(tensors, quantization, device, dtype))
    rest = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(rest, strict=False, assign=True)
    if args.tie_embeddings and quantization == "none":
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(args.max_seq_len, device)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if on_meta:
        raise CheckpointError(f"weights missing after load: {', '.join(on_meta[:5])}")
    return model.eval().requires_grad_(False)


def load_model(
    path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
) -> tuple[Transformer, Tokenizer, CheckpointInfo]:
    """Load any supported checkpoint folder, ready for inference."""
    info = inspect_checkpoint(path)
    target = resolve_device(device)
    check_quantization(quantize, target)
    if info.quantization != "none" and quantize not in ("none", info.quantization):
        raise CheckpointError(f"{info.path}: saved as {info.quantization}; it cannot be loaded as {quantize}")
    quantization = info.quantization if info.quantization != "none" else quantize
    try:
        tokenizer = Tokenizer(info.tokenizer_path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    state = read_state_dict(info)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Transformer(info.args).state_dict().items()}
    check_state_dict(info, state, expected)
    torch_dtype = resolve_dtype(dtype, target, info.args)
    return build_model(info.args, state, target, torch_dtype, quantization), tokenizer, info


# ---- saving ----


def save_checkpoint(
    out_dir: str | Path,
    model: Transformer,
    tokenizer_path: str | Path,
    quantize: str = "none",
    dtype: torch.dtype | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a full-precision model as a codellama-lsp checkpoint, atomically.

    quantize="int8"/"int4" stores the portable quantized weights (loaded without
    re-quantizing); dtype casts the floating-point tensors (e.g. bf16 to halve the size).
    """
    out_dir = Path(out_dir)
    if quantize not in ("none", *TORCH_QUANTIZATIONS):
        raise ValueError(f"cannot save {quantize!r}: only none, int8 and int4 are saved; nf4 is made at load time")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / NATIVE_CONFIG).is_file():
        raise CheckpointError(
            f"{out_dir}: refusing to overwrite a folder that is not a codellama-lsp checkpoint; "
            "choose an empty or new one"
        )
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        state.pop("lm_head.weight")  # safetensors refuses shared tensors; the loader re-ties
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if quantize != "none":
        if model.args.tie_embeddings:  # quantized, the output layer is a copy of its own
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        names = [n for n in quantized_linear_names(model) if f"{n}.weight" in state]
        state = quantize_state_dict(state, names, quantize)
        if model.args.tie_embeddings and "lm_head.weight" in state and state["lm_head.weight"].is_floating_point():
            state.pop("lm_head.weight")  # int4 could not pack it: it stays tied
    config = {
        "format": "codellama-lsp",
        "version": NATIVE_FORMAT_VERSION,
        "model_args": model.args.to_dict(),
        "quantization": quantize,
        **(extra or {}),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a model folder is not
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / NATIVE_WEIGHTS))
        (staging / NATIVE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        if out_dir.exists():
            backup = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(out_dir, backup)
            os.replace(staging, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
