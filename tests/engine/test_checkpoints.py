"""Checkpoint formats: Meta shards, Hugging Face folders, our own; and the errors for bad ones."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from engine.checkpoints import META_SHARD_DIM, META_TO_HF, CheckpointError, load_model, save_checkpoint
from engine.model import ModelArgs, Transformer
from tests.engine.test_model import hf_reference
from tests.fixtures import random_model, tiny_args


def hf_to_meta_permutation(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of the loader's Meta -> HF permutation (rotate-half -> interleaved pairs)."""
    rows, dim = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def write_meta_checkpoint(model: Transformer, tokenizer_path: Path, out: Path, shards: int) -> Path:
    """Write weights the way Meta's model-parallel checkpoints hold them."""
    args = model.args
    out.mkdir(parents=True)
    hf_to_meta = {}
    for meta_name, hf_name in META_TO_HF.items():
        for i in range(args.n_layers) if "{}" in meta_name else [None]:
            hf_to_meta[hf_name.format(i)] = meta_name.format(i)
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for hf_name, tensor in model.state_dict().items():
        meta_name = hf_to_meta[hf_name]
        if "q_proj" in hf_name:
            tensor = hf_to_meta_permutation(tensor, args.n_heads)
        elif "k_proj" in hf_name:
            tensor = hf_to_meta_permutation(tensor, args.n_kv_heads)
        dim = META_SHARD_DIM.get(meta_name.split(".")[-2])
        for shard, piece in enumerate(tensor.chunk(shards, dim=dim) if dim is not None else [tensor] * shards):
            parts[shard][meta_name] = piece.clone()
    for shard, state in enumerate(parts):
        torch.save(state, out / f"consolidated.{shard:02d}.pth")
    params = {  # like Code Llama's params.json: no vocab_size (it comes from the tokenizer)
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "multiple_of": args.multiple_of,
        "ffn_dim_multiplier": args.ffn_dim_multiplier,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
    }
    (out / "params.json").write_text(json.dumps(params))
    shutil.copy(tokenizer_path, out / "tokenizer.model")
    return out


def write_hf_checkpoint(model: Transformer, tokenizer_path: Path, out: Path) -> Path:
    """Write the weights with transformers' own save_pretrained, sharded with an index."""
    reference = hf_reference(model.args, model.state_dict())
    reference.save_pretrained(out, max_shard_size="200KB", safe_serialization=True)
    shutil.copy(tokenizer_path, out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def source_model(tokenizer) -> Transformer:
    # vocab matches the tokenizer so Meta's params.json can leave vocab_size out.
    return random_model(tiny_args(vocab_size=tokenizer.vocab_size), seed=3)


@pytest.fixture(scope="module")
def meta_dir(source_model, tokenizer_path, tmp_path_factory) -> Path:
    return write_meta_checkpoint(source_model, tokenizer_path, tmp_path_factory.mktemp("meta") / "ckpt", shards=2)


@pytest.fixture(scope="module")
def hf_dir(source_model, tokenizer_path, tmp_path_factory) -> Path:
    return write_hf_checkpoint(source_model, tokenizer_path, tmp_path_factory.mktemp("hf") / "ckpt")


def logits(model: Transformer) -> torch.Tensor:
    tokens = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        return model(tokens)


def test_meta_shards_and_hf_folder_give_identical_logits(source_model, meta_dir, hf_dir):
    assert len(list(hf_dir.glob("model-*-of-*.safetensors"))) > 1
    assert (hf_dir / "model.safetensors.index.json").is_file()
    meta, _, meta_info = load_model(meta_dir, "cpu", "float32")
    hf, _, hf_info = load_model(hf_dir, "cpu", "float32")
    assert (meta_info.format, hf_info.format) == ("meta", "hf")
    assert meta.args.vocab_size == source_model.args.vocab_size
    assert hf.args.rope_theta == meta.args.rope_theta == 1e6
    expected = logits(source_model)
    assert torch.equal(logits(meta), expected)
    assert torch.equal(logits(hf), expected)


def test_native_round_trip(source_model, tokenizer_path, tmp_path):
    save_checkpoint(tmp_path / "native", source_model, tokenizer_path)
    model, tokenizer, info = load_model(tmp_path / "native", "cpu", "float32")
    assert info.format == "native" and tokenizer.vocab_size == source_model.args.vocab_size
    assert torch.equal(logits(model), logits(source_model))
    # Saving again over the same folder replaces it atomically.
    save_checkpoint(tmp_path / "native", source_model, tokenizer_path, dtype=torch.bfloat16)
    reloaded, _, _ = load_model(tmp_path / "native", "cpu", "bfloat16")
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def test_tied_embeddings_round_trip(tokenizer_path, tmp_path):
    model = random_model(tiny_args(tie_embeddings=True))
    save_checkpoint(tmp_path / "tied", model, tokenizer_path)
    loaded, _, _ = load_model(tmp_path / "tied", "cpu", "float32")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(logits(loaded), logits(model))


def test_hf_config_of_code_llama_7b(tmp_path, tokenizer_path):
    config = {  # codellama/CodeLlama-7b-hf config.json (the fields we read)
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000,
        "max_position_embeddings": 16384,
        "vocab_size": 32016,
        "tie_word_embeddings": False,
    }
    from engine.checkpoints import args_from_hf_config

    args = args_from_hf_config(config, tmp_path / "config.json")
    assert args == ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32016, rope_theta=1e6)


# ---- bad checkpoints ----


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_and_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a checkpoint folder: expected config\.json"):
        load_model(tmp_path / "empty")


def test_missing_tokenizer(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    (broken / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match=r"hf: no tokenizer.model"):
        load_model(broken, "cpu")


def test_missing_weight_shard(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    next(broken.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: weight file\(s\) missing"):
        load_model(broken, "cpu")


def test_wrong_shapes(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[\d+, 64\]"):
        load_model(broken, "cpu")


def test_truncated_safetensors(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: cannot read safetensors file .*truncated or corrupt"):
        load_model(broken, "cpu")


class RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(meta_dir, tmp_path):
    broken = copy_dir(meta_dir, tmp_path / "meta")
    marker = tmp_path / "code-ran"
    state = torch.load(broken / "consolidated.00.pth", weights_only=True)
    state["evil"] = RunsCode(marker)
    torch.save(state, broken / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: refusing to load: the file holds Python objects"):
        load_model(broken, "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["legacy torch.save", "plain pickle with code"])
def test_legacy_pickles_are_refused_for_what_they_are(meta_dir, tmp_path, how):
    broken = copy_dir(meta_dir, tmp_path / "meta")
    marker = tmp_path / "code-ran"
    state = torch.load(broken / "consolidated.00.pth", weights_only=True)
    if how == "legacy torch.save":
        torch.save(state, broken / "consolidated.00.pth", _use_new_zipfile_serialization=False)
    else:
        with (broken / "consolidated.00.pth").open("wb") as f:
            pickle.dump({**state, "evil": RunsCode(marker)}, f)
    with pytest.raises(CheckpointError, match=r"refusing to load: a legacy-format PyTorch file") as error:
        load_model(broken, "cpu")
    assert "truncated or corrupt" not in str(error.value)
    assert not marker.exists()


def test_a_truncated_pth_is_called_truncated(meta_dir, tmp_path):
    broken = copy_dir(meta_dir, tmp_path / "meta")
    shard = broken / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: cannot read PyTorch file .*truncated or corrupt"):
        load_model(broken, "cpu")


def test_unsupported_architecture(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "mistral"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported architecture: model_type 'mistral'"):
        load_model(broken, "cpu")


def test_missing_config_field_and_bad_json(meta_dir, tmp_path):
    broken = copy_dir(meta_dir, tmp_path / "meta")
    params = json.loads((broken / "params.json").read_text())
    del params["n_heads"]
    (broken / "params.json").write_text(json.dumps(params))
    with pytest.raises(CheckpointError, match=r"params.json: missing field 'n_heads'"):
        load_model(broken, "cpu")
    (broken / "params.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"params.json: cannot read JSON"):
        load_model(broken, "cpu")


def test_missing_and_unexpected_tensors(source_model, tokenizer_path, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_checkpoint(tmp_path / "native", source_model, tokenizer_path)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "model.norm.weight"}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.norm.weight' is missing"):
        load_model(folder, "cpu")
    save_file({**state, "vision_tower.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'vision_tower.weight'"):
        load_model(folder, "cpu")


def test_saving_never_overwrites_a_folder_that_is_not_a_checkpoint(source_model, tokenizer_path, tmp_path):
    precious = tmp_path / "models"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to overwrite a folder that is not a checkpoint of this format"):
        save_checkpoint(precious, source_model, tokenizer_path)
    assert (precious / "notes.txt").read_text() == "keep me"
    saved = save_checkpoint(tmp_path / "new", source_model, tokenizer_path)
    assert saved.stat().st_mode & 0o055 == 0o055  # readable by others, like any folder made here


def test_index_naming_files_outside_the_folder_is_refused(hf_dir, tmp_path):
    broken = copy_dir(hf_dir, tmp_path / "hf")
    index = broken / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="weight files outside the checkpoint folder"):
        load_model(broken, "cpu")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tied_embeddings_save_quantized(tokenizer_path, tmp_path, mode):
    # dim 64: int4 cannot pack the output layer (groups of 128), so it stays tied.
    model = random_model(tiny_args(tie_embeddings=True))
    save_checkpoint(tmp_path / mode, model, tokenizer_path, quantize=mode)
    loaded, _, info = load_model(tmp_path / mode, "cpu", "float32")
    at_load, _, _ = load_model(save_checkpoint(tmp_path / "fp", model, tokenizer_path), "cpu", "float32", mode)
    assert info.quantization == mode
    assert torch.equal(logits(loaded), logits(at_load))


def test_auto_dtype_on_cpu_follows_what_was_measured(monkeypatch):
    from engine import checkpoints
    from engine.checkpoints import resolve_dtype
    from engine.model import MODEL_CONFIGS

    cpu, small, large = torch.device("cpu"), tiny_args(), MODEL_CONFIGS["7B-2layer"]
    monkeypatch.setattr(checkpoints, "fp32_fits", lambda args: True)
    for native in (False, True):
        monkeypatch.setattr(checkpoints, "native_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu, small) == torch.float32  # overhead-bound decode: fp32
        assert resolve_dtype("auto", torch.device("cuda"), small) == torch.bfloat16
    assert resolve_dtype("auto", cpu, large) == torch.bfloat16  # native bf16: half the bytes a token
    monkeypatch.setattr(checkpoints, "native_bf16", lambda: False)
    monkeypatch.setattr(checkpoints, "fp32_fits", lambda args: True)
    assert resolve_dtype("auto", cpu, large) == torch.float32
    monkeypatch.setattr(checkpoints, "fp32_fits", lambda args: False)
    assert resolve_dtype("auto", cpu, large) == torch.bfloat16


def test_explicit_bf16_without_native_bf16_computes_in_fp32_where_that_is_faster(monkeypatch, caplog):
    from engine import checkpoints
    from engine.checkpoints import resolve_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(checkpoints, "native_bf16", lambda: False)
    monkeypatch.setattr(checkpoints, "fp32_fits", lambda args: True)
    for faster in (False, True):
        monkeypatch.setattr(checkpoints, "bf16_faster_here", lambda args, faster=faster: faster)
        assert resolve_dtype("bfloat16", cpu, tiny_args()) == (torch.bfloat16 if faster else torch.float32)
    assert "computing in fp32" in caplog.text
    monkeypatch.setattr(checkpoints, "native_bf16", lambda: True)
    assert resolve_dtype("bfloat16", cpu, tiny_args()) == torch.bfloat16
