"""The compiled decode step: the same math as the eager forward, greedy output identical once
compiled, used only where it was measured faster, and serving goes on while it compiles."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

import engine.compiled as compiled_module
import engine.session as session_module
from engine.checkpoints import load_model
from engine.compiled import TIE_ULPS, disagreement, rounding_eps, use_private_compile_cache, worth_trying
from engine.generate import decode_one_token, prefill
from engine.prompts import InfillPrompt
from engine.sampling import SamplingParams
from engine.session import InfillEngine
from engine.user_cache import private_cache_dir

CACHE = 256
SOURCE = (Path(__file__).parents[2] / "engine" / "postprocess.py").read_text(encoding="utf-8")


def engine_for(path, quantize: str = "none", slots: int = 2) -> InfillEngine:
    model, tok, _ = load_model(path, "cpu", "float32", quantize)
    return InfillEngine(model, tok, max_seq_len=CACHE, cache_slots=slots)


def prompts(engine: InfillEngine, count: int) -> list[InfillPrompt]:
    tok = engine.tokenizer
    out = []
    for start in range(0, 400 * count, 400):
        ids = tok.encode(SOURCE[start : start + 300])[:150]
        out.append(InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *ids]))
    return out


def greedy(engine: InfillEngine, prompt: InfillPrompt, lookup: bool = False):
    return engine.generate(prompt, SamplingParams(max_new_tokens=40, prompt_lookup=lookup))


def test_the_static_step_computes_what_the_forward_pass_does(tiny_checkpoint):
    # Uncompiled: the step's own math (attention over the whole cache under a mask, grouped
    # query heads, the cache written at pos) against the eager decode, in both cache slots.
    engine = engine_for(tiny_checkpoint)
    model, cache = engine.model, engine.cache
    assert model.args.n_kv_heads < model.args.n_heads  # grouped-query attention is covered
    for slot in (0, 1):
        prompt = list(range(10 + slot, 60 + slot))
        logits, _ = prefill(model, prompt, 0, cache, slot)
        token, pos = int(logits.argmax()), len(prompt)
        keys = [k[slot : slot + 1] for k in cache.keys]
        values = [v[slot : slot + 1] for v in cache.values]
        for _ in range(8):
            expected = decode_one_token(model, token, pos, cache, slot)
            written = [t[slot, :, pos].clone() for t in cache.keys + cache.values]
            for t in cache.keys + cache.values:  # the step must write position pos itself
                t[slot, :, pos] = 0
            with torch.inference_mode():
                got = model.decode_static(torch.tensor([[token]]), torch.tensor([pos]), keys, values)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            for t, before in zip(cache.keys + cache.values, written, strict=True):
                torch.testing.assert_close(t[slot, :, pos], before)
            token, pos = int(expected.argmax()), pos + 1


@pytest.fixture(scope="module", params=[("C", "none"), ("C", "int8"), ("C", "int4"), ("torch.compile", "none")],
                ids=lambda p: "-".join(p))  # fmt: skip
def compiled_engine(request, tiny_checkpoint):
    """An engine with its fast step: the C one (what CPUs use), and torch.compile's (what CUDA uses,
    and a CPU where the C step cannot run) compiled for the CPU, so that CI tests its graph too."""
    kind, quantization = request.param
    engine = engine_for(tiny_checkpoint, quantization)
    with pytest.MonkeyPatch.context() as patch:
        if kind == "torch.compile":
            patch.setattr(compiled_module, "make_step", compiled_module.CompiledDecode)
        report = engine.prepare_decode("on")
    assert report.step == kind
    return engine, report


def test_compiled_greedy_output_is_eagers(compiled_engine):
    assert_compiled_matches_eager(*compiled_engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_compiled_cuda_graphs_give_eagers_greedy_output(tiny_checkpoint, quantize):
    model, tok, _ = load_model(tiny_checkpoint, "cuda", "float32", quantize)
    engine = InfillEngine(model, tok, max_seq_len=CACHE, cache_slots=2)
    assert_compiled_matches_eager(engine, engine.prepare_decode("on"))


def greedy_tokens(engine: InfillEngine, prompt: InfillPrompt, lookup: bool) -> tuple[list[int], str]:
    engine.slot_tokens = [[], []]
    params = SamplingParams(max_new_tokens=40, prompt_lookup=lookup)
    with engine.stream(prompt, params) as stream:
        for _ in stream:
            pass
    return list(stream.generated), stream.stats.stop_reason


def assert_compiled_matches_eager(engine: InfillEngine, report) -> None:
    """Greedy output identical to eager's, except where eager's logits tie up to rounding (exactly
    identical in fp32 on these prompts; with bf16 activations a last-bit difference can break a tie
    the other way, and the test then checks that it was one)."""
    assert report.state == "compiled", report.describe()
    assert report.speedup is not None and report.speedup > 0 and report.compile_s is not None
    decoder = engine.compiled
    assert decoder is not None
    eps = rounding_eps(engine.model)
    fp32 = eps == torch.finfo(torch.float32).eps
    for lookup in (False, True):
        for prompt in prompts(engine, 6):
            engine.compiled = decoder
            fast, fast_stop = greedy_tokens(engine, prompt, lookup)
            engine.compiled = None
            plain, plain_stop = greedy_tokens(engine, prompt, lookup)
            if fp32:
                assert fast == plain and fast_stop == plain_stop
                continue
            split = next((i for i, (a, b) in enumerate(zip(fast, plain, strict=False)) if a != b), None)
            if split is None:
                assert fast == plain and fast_stop == plain_stop
                continue
            engine.reset_cache()
            logits, _ = prefill(engine.model, prompt.tokens + plain[:split], 0, engine.cache, 0)
            scale = float(logits.abs().max())
            margin = float(logits[plain[split]] - logits[fast[split]])
            assert margin <= TIE_ULPS * eps * scale, f"not a tie: margin {margin} at token {split}"
    engine.compiled = decoder


def test_the_check_tells_ties_from_wrong_picks():
    eager = [torch.tensor([4.0, 4.0 - 2**-7, 1.0]), torch.tensor([1.0, 3.0, 2.9])]
    eps = torch.finfo(torch.bfloat16).eps
    # compiled broke the tie of step 0 the other way: fine
    tie = [torch.tensor([4.0 - 2**-6, 4.0, 1.0]), eager[1]]
    assert disagreement([0, 1], eager, tie, eps) == ""
    # picked the runner-up of a clear choice: wrong
    wrong = [eager[0], torch.tensor([1.0, 2.95, 2.96])]
    assert "picked token 2 over eager's 1" in disagreement([0, 1], eager, wrong, eps)
    # the same tie in fp32 is no tie
    assert "picked token 1 over eager's 0" in disagreement([0, 1], eager, tie, torch.finfo(torch.float32).eps)
    # logits far off even where the pick agrees
    off = [eager[0], torch.tensor([1.0, 3.0, 0.4])]
    assert "logits differed by 2.5" in disagreement([0, 1], eager, off, eps)


def test_the_compiled_step_serves_both_slots_and_reuses_the_cache(compiled_engine):
    engine, _ = compiled_engine
    first, second = prompts(engine, 2)
    engine.reset_cache()
    a1 = engine.generate(first, SamplingParams(max_new_tokens=20), session="a")
    b1 = engine.generate(second, SamplingParams(max_new_tokens=20), session="b")
    a2 = engine.generate(first, SamplingParams(max_new_tokens=20), session="a")
    assert a2.text == a1.text and a2.stats.reused_tokens == len(first.tokens) - 1
    assert {a1.stats.slot, b1.stats.slot} == {0, 1}


def test_the_compiled_step_ends_at_eot(scripted_checkpoint):
    from tests.lsp.helpers import SCRIPT

    engine = engine_for(scripted_checkpoint)
    engine.prepare_decode("on")
    tok = engine.tokenizer
    prompt = InfillPrompt([tok.bos_id, tok.prefix_id, tok.suffix_id, tok.middle_id, *tok.encode("x = 1\n")])
    result = greedy(engine, prompt)
    assert engine.compiled is not None and result.text == SCRIPT and result.stats.stop_reason == "eot"


def test_modes_and_where_auto_does_not_compile(tiny_checkpoint, monkeypatch):
    engine = engine_for(tiny_checkpoint)
    assert engine.prepare_decode("off").describe() == "decode step eager: off" and engine.compiled is None
    monkeypatch.setattr(compiled_module, "CPU_COMPILE_MAX_WEIGHT_BYTES", 1000)
    assert worth_trying(engine.model, engine.device) == ""  # the C step is tried at any size
    monkeypatch.setattr(compiled_module, "unsupported", lambda model: "a LoRA layer")
    report = engine.prepare_decode("auto")  # torch.compile's would be: not past 1 GiB on a CPU
    assert report.state == "eager" and "memory-bound" in report.detail and engine.compiled is None
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        engine.prepare_decode("fast")


def test_the_engine_answers_while_compiling_and_survives_a_failed_compile(tiny_checkpoint, monkeypatch):
    engine = engine_for(tiny_checkpoint)
    release = threading.Event()

    def failing_build(*args, **kwargs):
        release.wait(30)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(session_module, "build_compiled_decode", failing_build)
    assert engine.prepare_decode("on", background=True).state == "compiling"
    [prompt] = prompts(engine, 1)
    answer = greedy(engine, prompt)  # the eager step answers meanwhile
    assert answer.stats.generated_tokens > 0 and engine.decode_report.state == "compiling"
    release.set()
    deadline = time.monotonic() + 30
    while engine.decode_report.state == "compiling" and time.monotonic() < deadline:
        time.sleep(0.05)
    report = engine.decode_report
    assert report.state == "kept-eager" and "RuntimeError: no C++ compiler found" in report.detail
    engine.reset_cache()
    assert greedy(engine, prompt).text == answer.text and engine.compiled is None


def test_a_step_that_is_not_faster_is_not_used(tiny_checkpoint, monkeypatch):
    engine = engine_for(tiny_checkpoint)
    step = compiled_module.CpuDecode.__call__

    def slower(self, *args):  # 20 ms a token more than the C step: slower than eager, surely
        time.sleep(0.02)
        return step(self, *args)

    monkeypatch.setattr(compiled_module.CpuDecode, "__call__", slower)
    report = engine.prepare_decode("auto")
    assert report.state == "kept-eager" and report.speedup < 1 and engine.compiled is None
    assert "not faster" in report.describe()


def test_compiled_code_is_cached_in_a_folder_only_this_user_writes(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_private_compile_cache()
    folder = tmp_path / "codellama-lsp" / "torch-compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder) and folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o775)  # made under umask 002, say: ours, so narrowed again
    (tmp_path / "codellama-lsp").chmod(0o777)
    assert private_cache_dir("torch-compile") == folder
    assert folder.stat().st_mode & 0o777 == (tmp_path / "codellama-lsp").stat().st_mode & 0o777 == 0o700
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")  # a symlink could lead anywhere another user chose
    with pytest.raises(PermissionError, match="torch-compile: not a folder of this user's"):
        private_cache_dir("torch-compile")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_private_compile_cache()  # compiling still works, from a fresh private folder, uncached
    temporary = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert temporary != folder and temporary.stat().st_mode & 0o777 == 0o700 and not temporary.is_symlink()
    assert "not kept across restarts" in caplog.text
    temporary.rmdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))
    use_private_compile_cache()  # the user's own choice stands
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "chosen")
