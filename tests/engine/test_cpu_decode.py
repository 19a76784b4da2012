"""The C decode step (engine/cpu_decode.c) against the eager forward: every weight format, both
cache slots, grouped-query attention, the cache written at pos, and refusals instead of crashes."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch
from torch import nn

import engine.cpu_decode as cpu_decode
from engine import c_library
from engine.checkpoints import build_model
from engine.compiled import disagreement, rounding_eps
from engine.cpu_decode import CpuDecode, unsupported
from engine.cpu_linear import use_fp32_cpu_layers
from engine.generate import decode_one_token, prefill, verify
from engine.machine import cpu_flags
from engine.model import KVCache
from tests.fixtures import random_model, tiny_args

# int4 quantizes layers whose inputs are a multiple of 128: dim 128 covers every layer but the
# output one; vocab 1008 = 15 x 64 + 48 covers the int4 pack's rows past its last block of 64.
ARGS = dict(dim=128, n_heads=4, n_kv_heads=2, vocab_size=1008)
FORMATS = [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("bfloat16", "int8"),
           ("float32", "int4"), ("bfloat16", "int4"), ("float32", "tiled")]  # fmt: skip
TILE = 32
""""tiled": fp32 weights in column tiles (engine.cpu_linear) this wide at most, so a tiny model has several."""


def built(args, state: dict, dtype: str, quantization: str):
    """The model from state; "tiled": fp32, as load_engine leaves it on CPU with TILE-wide tiles."""
    tiled = quantization == "tiled"
    model = build_model(args, state, torch.device("cpu"), getattr(torch, dtype), "none" if tiled else quantization)
    if tiled:
        assert use_fp32_cpu_layers(model, widest=TILE) == 7 * args.n_layers + 1  # the output layer too
    return model


def model_in(dtype: str, quantization: str):
    reference = random_model(tiny_args(**ARGS), seed=3)
    return built(reference.args, {k: v.clone() for k, v in reference.state_dict().items()}, dtype, quantization)


@pytest.mark.parametrize(("dtype", "quantization"), FORMATS)
def test_the_c_step_computes_what_the_eager_forward_does(dtype, quantization):
    model = model_in(dtype, quantization)
    if quantization == "int4":  # every layer, the output one with its 48 rows past the last block
        assert type(model.lm_head).__name__ == type(model.model.layers[0].mlp.down_proj).__name__ == "Int4Linear"
    step = CpuDecode(model)
    cache = KVCache(model.args, 128, slots=2, dtype=getattr(torch, dtype))
    eps = rounding_eps(model)
    close = max(8 * eps, 1e-5)
    for slot in (0, 1):
        prompt = list(range(10 + slot, 50 + slot))
        logits, _ = prefill(model, prompt, 0, cache, slot)
        token, pos = int(logits.argmax()), len(prompt)
        tokens, eager, fast = [], [], []
        for _ in range(12):
            expected = decode_one_token(model, token, pos, cache, slot)
            written = [t[slot, :, pos].clone() for t in cache.keys + cache.values]
            for t in cache.keys + cache.values:  # the step must write position pos itself
                t[slot, :, pos] = 0
            got = step(token, pos, cache, slot)
            assert got.shape == (model.args.vocab_size,) and got.dtype == torch.float32
            for t, before in zip(cache.keys + cache.values, written, strict=True):
                torch.testing.assert_close(t[slot, :, pos].float(), before.float(), atol=close, rtol=close)
            tokens.append(token)
            eager.append(expected.float())
            fast.append(got)
            token, pos = int(expected.argmax()), pos + 1
        if eps == torch.finfo(torch.float32).eps:
            torch.testing.assert_close(torch.stack(fast), torch.stack(eager), atol=1e-4, rtol=1e-4)
        assert disagreement([int(e.argmax()) for e in eager], eager, fast, eps) == ""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="builds for older x86-64 CPUs")
@pytest.mark.parametrize(("march", "needs"), [("x86-64-v3", "avx2"), ("skylake-avx512", "avx512bw")])
def test_the_portable_loops_compute_what_the_eager_forward_does(monkeypatch, tmp_path, march, needs):
    # Without AVX-512 (an AVX2 EPYC, say) fp32 and bf16 layers take the AVX2 loops and int8 and
    # int4 the plain C ones; with AVX-512 but not its bf16 instructions (a Skylake Xeon), bf16
    # layers take the AVX2 loop. Built for such CPUs here, they must agree too.
    if needs not in cpu_flags()[1]:
        pytest.skip(f"a {march} build runs only on a CPU with {needs}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(c_library, "_library", None)
    monkeypatch.setattr(c_library, "FLAGS", [f if f != "-march=native" else f"-march={march}" for f in c_library.FLAGS])
    formats = [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "int8"), ("float32", "int4")]
    for dtype, quantization in [*formats, ("float32", "tiled")]:
        test_the_c_step_computes_what_the_eager_forward_does(dtype, quantization)
        test_a_token_checked_in_a_draft_gets_the_bits_it_gets_decoded_alone(dtype, quantization)
    (built,) = (tmp_path / "codellama-lsp" / "cpu-decode").glob("cpu_decode-*.so")  # this build, not the cached one
    assert str(built) == c_library._library._name


def test_the_c_step_refuses_what_it_cannot_run():
    model = random_model(tiny_args(**ARGS))
    assert unsupported(model) == ""
    model.model.layers[1].mlp.up_proj = nn.Linear(128, 384, bias=True)
    assert "only plain, int8 and int4 linear layers" in unsupported(model)
    with pytest.raises(ValueError, match="cannot run this model"):
        CpuDecode(model)
    assert "float16 weights" in unsupported(random_model(tiny_args(**ARGS)).half())
    strided = random_model(tiny_args(**ARGS))
    strided.model.norm.weight = nn.Parameter(torch.ones(256)[::2])
    assert "not contiguous" in unsupported(strided)


def test_bad_positions_and_tokens_are_errors_not_crashes():
    model = random_model(tiny_args(**ARGS))
    step, cache = CpuDecode(model), KVCache(model.args, 32, slots=1)
    for token, pos, slot in ((5, 32, 0), (5, -1, 0), (5, 3, 1), (1008, 3, 0), (-1, 3, 0)):
        with pytest.raises(ValueError, match="outside"):
            step(token, pos, cache, slot)
    with pytest.raises(ValueError, match="KV cache for a"):
        step(5, 3, KVCache(model.args, 32, slots=1, dtype=torch.bfloat16), 0)


def test_the_library_is_built_once_and_kept_privately(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(c_library, "_library", None)
    cpu_decode.load_library()
    folder = tmp_path / "codellama-lsp" / "cpu-decode"
    (built,) = folder.glob("cpu_decode-*.so")
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(c_library, "_library", None)
    cpu_decode.load_library()
    assert built.stat().st_mtime_ns == stamp and list(folder.iterdir()) == [built]


def test_without_a_compiler_the_reason_is_said(monkeypatch):
    monkeypatch.setattr(c_library, "_library", None)
    monkeypatch.setattr(c_library, "c_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C compiler"):
        CpuDecode(random_model(tiny_args(**ARGS)))


def test_a_compiler_error_is_reported_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(c_library, "_library", None)
    monkeypatch.setattr(c_library, "FLAGS", [*c_library.FLAGS, "-DDOES_NOT_COMPILE", "-include", os.devnull + "x"])
    with pytest.raises(RuntimeError, match=r"could not compile cpu_decode\.c, cpu_dequant\.c"):
        cpu_decode.load_library()
    assert list((tmp_path / "codellama-lsp" / "cpu-decode").iterdir()) == []


@pytest.mark.parametrize(
    ("dtype", "quantization"), [("float32", "none"), ("bfloat16", "int8"), ("bfloat16", "int4"), ("float32", "tiled")]
)
def test_a_draft_is_checked_in_one_call_as_the_eager_pass_checks_it(dtype, quantization):
    # Several tokens at once (a prompt-lookup draft): each attends to the positions up to its own,
    # the keys and values of all of them land in the cache; past MAX_TOKENS the call is split.
    model = model_in(dtype, quantization)
    step = CpuDecode(model)
    cache = KVCache(model.args, 128, slots=2, dtype=getattr(torch, dtype))
    eps = rounding_eps(model)
    prompt, draft = list(range(10, 40)), [17, 99, 5, 640, 3, 3, 250, 8, 1000, 44, 12, 13, 14, 15, 16, 17, 18, 19]
    for slot in (0, 1):
        prefill(model, prompt, 0, cache, slot)
    expected = verify(model, draft, len(prompt), cache, 0).float()
    got = step.verify(draft, len(prompt), cache, 1)
    assert got.shape == (len(draft), model.args.vocab_size) and len(draft) > cpu_decode.MAX_TOKENS
    close = max(8 * eps, 1e-5)
    filled = len(prompt) + len(draft)
    for t in cache.keys + cache.values:
        torch.testing.assert_close(t[1, :, :filled].float(), t[0, :, :filled].float(), atol=close, rtol=close)
    picks = [int(row.argmax()) for row in expected]
    assert disagreement(picks, list(expected), list(got), eps) == ""
    one_by_one = torch.stack([step(token, len(prompt) + i, cache, 1) for i, token in enumerate(draft)])
    assert disagreement(picks, list(expected), list(one_by_one), eps) == ""
    if quantization in ("none", "tiled"):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "quantization"), FORMATS)
def test_a_token_checked_in_a_draft_gets_the_bits_it_gets_decoded_alone(dtype, quantization):
    # Drafts of 2..9 tokens (the multi-token kernels take them four at a time, then the rest) on
    # widths with every tail of the kernels' loops (144 = 2 x 64 + 16, FFN 448 = 7 x 64, vocab
    # 1008 = 15 x 64 + 48; int4 on 128): the same sums in the same order as one token at a time, so greedy
    # output with prompt lookup is exactly that without it.
    # Unquantized, also heads of 34 in a 136-wide model with a cache of 130 positions: query rows
    # and the per-token score rows then start at other offsets within a cache line. (int4 layers
    # need inputs in multiples of 128; torch's int8 kernel crashed on 136.)
    # Tiled: 144 in tiles of 16, 448 of 32, 136 (no tile of whole 16-float vectors divides it) row-major.
    shapes = {"none": ((144, 128), (136, 130)), "int8": ((144, 128),), "int4": ((128, 128),)}
    shapes["tiled"] = shapes["none"]
    for dim, cache_len in shapes[quantization]:
        args = tiny_args(dim=dim, n_heads=4, n_kv_heads=2, vocab_size=1008, hidden_dim=448)
        reference = random_model(args, seed=5)
        model = built(args, {k: v.clone() for k, v in reference.state_dict().items()}, dtype, quantization)
        step = CpuDecode(model)
        cache = KVCache(args, cache_len, slots=1, dtype=getattr(torch, dtype))
        prefill(model, list(range(10, 30)), 0, cache, 0)
        for size in range(2, 10):
            draft = [(37 * size + 11 * i) % 1008 for i in range(size)]
            together = step.verify(draft, 20, cache, 0)
            alone = torch.stack([step(token, 20 + i, cache, 0) for i, token in enumerate(draft)])
            assert torch.equal(together, alone), f"a draft of {size}, dim {dim}, cache {cache_len}"


def test_more_threads_than_the_scratch_was_sized_for_get_a_new_scratch():
    # Each thread has a share of the scratch: a torch.set_num_threads after the first call must
    # not let the second thread write past its end.
    model = model_in("float32", "none")
    step, cache = CpuDecode(model), KVCache(model.args, 32, slots=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step(5, 3, cache, 0)
        torch.set_num_threads(3)
        three = step(5, 3, cache, 0)
        plan, kept, sized_for = step._plans[id(cache)]
        assert sized_for == 3 and kept[-1].numel() >= step.library.cpu_decode_scratch_floats(ctypes.byref(plan))
        torch.testing.assert_close(three, one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("dtype", "quantization"), [("float32", "none"), ("bfloat16", "int4")])
def test_every_thread_count_gets_the_same_bits(dtype, quantization):
    """Threads share a token's rows in chunks and take what is left of each other's shares: every
    chunk must be computed once, whoever computes it (more threads than chunks or cores too)."""
    model = model_in(dtype, quantization)
    step = CpuDecode(model)
    prompt = KVCache(model.args, 64, slots=1, dtype=getattr(torch, dtype))
    prefill(model, list(range(3, 20)), 0, prompt, 0)
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2, 3, 5):
            cache = KVCache(model.args, 64, slots=1, dtype=getattr(torch, dtype))
            for mine, filled in zip(cache.keys + cache.values, prompt.keys + prompt.values, strict=True):
                mine.copy_(filled)
            torch.set_num_threads(count)  # (the C step's threads only: the prompt is the same bits)
            results[count] = torch.cat([step(7, 17, cache, 0)[None], step.verify([9, 4, 2, 8, 6], 18, cache, 0)])
    finally:
        torch.set_num_threads(threads)
    for count, logits in results.items():
        assert torch.equal(logits, results[1]), f"{count} threads"


def test_a_compiler_command_with_arguments_and_stale_files(monkeypatch, tmp_path):
    # $CC may be a command line (`ccache gcc`); a build removes libraries of other sources and the
    # temporary files of builds whose process died, and nothing else.
    if c_library.c_compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", f"env {c_library.c_compiler()[0]}")
    monkeypatch.setattr(c_library, "_library", None)
    folder = tmp_path / "codellama-lsp" / "cpu-decode"
    folder.mkdir(parents=True, mode=0o700)
    stale, fresh, other = folder / ".cpu_decode-dead.so", folder / ".cpu_decode-building.so", folder / "notes.txt"
    old = folder / "cpu_decode-0123456789abcdef0123.so"
    for path in (stale, fresh, other, old):
        path.write_text("x")
    os.utime(stale, (0, 0))
    c_library.load_library()
    built = {path.name for path in folder.iterdir()}
    assert not stale.exists() and not old.exists() and fresh.exists() and other.exists()
    assert len([name for name in built if name.startswith("cpu_decode-")]) == 1
