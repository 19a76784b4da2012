"""Engine benchmark: ratios measured side by side in one run (the machine is shared and noisy).

    python -m engine.bench --tokenizer PATH         # 7B-sized layers, 2 of them, random weights
    python -m engine.bench --model PATH             # any checkpoint, e.g. the default model

1. Keystroke latency while typing 100 characters at the end of a function in a ~2,000-token
   file: with KV-cache reuse vs a cold cache (time to the first generated token).
2. Decode tokens/s against transformers' `generate` on the same weights and prompt.
3. fp32 / bf16 / int8 / int4: decode tokens/s, prefill tokens/s and resident memory, each in
   its own process so memory is measured cleanly; decode also as a fraction of its read bound
   (engine.read_bound: what reading the weights and cache at this machine's measured rate allows).
4. On CUDA only: a full-size random 7B in bf16 / int8 / nf4: time to first token for a
   2,000-token prompt, decode tokens/s and the fraction of the memory-bandwidth bound.
5. With --llama-cpp DIR (a llama.cpp source tree built with llama-bench and llama-quantize,
   e.g. by .ci/build-llama-server plus those targets): the same weights converted to GGUF by
   that tree's own convert_hf_to_gguf.py (F32, BF16, Q8_0; Q4_0 by llama-quantize), timed by
   its llama-bench beside our engine (same threads): prefill of a ~520-token prompt and decode
   of 64 tokens after it (and after a ~18-token prompt), each side at the same depth, as ratios
   ours / llama.cpp, and each side's decode after the short prompt as a fraction of the read
   bound of its own weights (GGUF tensor sizes; f16 cache). Without DIR the section says it was
   skipped.

Decoding here is plain (prompt lookup off): its gain is measured by lsp.lookup_bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from engine import read_bound
from engine.checkpoints import hf_config, save_checkpoint
from engine.defaults import default_model_path
from engine.generate import SamplingParams
from engine.loader import load_engine
from engine.machine import describe_machine
from engine.model import MODEL_CONFIGS, Transformer
from engine.options import COMPILE_MODES
from engine.prompts import build_infill_prompt
from engine.session import InfillEngine
from engine.tokenizer import Tokenizer

TYPED = (
    '\n    if not lines:\n        return ""\n    width = max(len(line) for line in lines)\n    return "\\n".join(lines)'
)
TYPED = TYPED[:100]


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def source_around_function_end(tok: Tokenizer, prefix_tokens: int = 1500, suffix_tokens: int = 500) -> tuple[str, str]:
    """A real file (textwrap.py, repeated if short) cut at the end of a function body,
    its prefix trimmed at a line start to about prefix_tokens and its suffix to suffix_tokens."""
    text = Path(textwrap.__file__).read_text(encoding="utf-8")
    while len(tok.encode(text)) < 2 * (prefix_tokens + suffix_tokens):
        text += "\n\n" + text
    ends = (i for i in range(len(text)) if text.startswith(("\n\n    def ", "\n\n\ndef "), i))
    cursor = next(i for i in ends if len(tok.encode(text[:i])) >= prefix_tokens)
    lines = text[:cursor].splitlines(keepends=True)
    # The fewest leading lines to drop so the prefix fits (binary search: encode is the cost).
    low, high = 0, len(lines)
    while low < high:
        middle = (low + high) // 2
        if len(tok.encode("".join(lines[middle:]))) <= prefix_tokens:
            high = middle
        else:
            low = middle + 1
    suffix = text[cursor:]
    while len(tok.encode(suffix)) > suffix_tokens:
        suffix = suffix[: int(len(suffix) * 0.9)]
    return "".join(lines[low:]), suffix


def bench_keystrokes(engine: InfillEngine, cold_every: int) -> dict:
    prefix, suffix = source_around_function_end(engine.tokenizer)
    params = SamplingParams(max_new_tokens=1)
    warm, cold, prefilled = [], [], []
    for i, ch in enumerate(TYPED):
        prefix += ch
        result = engine.complete(prefix, suffix, params=params, session="bench")
        warm.append(result.stats.total_s)
        prefilled.append(result.stats.prefilled_tokens)
        if i % cold_every == 0:
            engine.reset_cache()
            cold.append(engine.complete(prefix, suffix, params=params, session="bench").stats.total_s)
    prompt_tokens = result.stats.prompt_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "keystrokes": len(TYPED),
        "warm_mean_ms": 1000 * statistics.mean(warm),
        "warm_p95_ms": 1000 * p95(warm),
        "cold_mean_ms": 1000 * statistics.mean(cold),
        "cold_p95_ms": 1000 * p95(cold),
        "cold_samples": len(cold),
        "prefilled_mean": statistics.mean(prefilled[1:]),
    }


def bench_decode_vs_transformers(engine: InfillEngine, new_tokens: int, repeats: int = 3) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_utils import no_init_weights

    config = LlamaConfig(**{**hf_config(engine.model.args), "max_position_embeddings": engine.max_seq_len})
    with no_init_weights():  # the weights are ours, shared, not copied
        reference = LlamaForCausalLM(config)
    missing = reference.load_state_dict(engine.model.state_dict(), strict=False, assign=True).missing_keys
    if missing:  # (strict=False only for the rotary buffers transformers keeps; no weight may be left out)
        raise RuntimeError(f"the transformers reference did not get {missing[:3]}")
    reference = reference.to(engine.dtype).eval()
    prefix, suffix = source_around_function_end(engine.tokenizer, 150, 50)
    ours_decode, ours_total, generated = [], [], new_tokens
    for _ in range(repeats):
        engine.reset_cache()
        result = engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=new_tokens, prompt_lookup=False))
        generated = result.stats.generated_tokens  # a trained model may stop at <EOT>
        ours_decode.append(result.stats.decode_s / max(1, generated - 1))
        ours_total.append(result.stats.total_s)
    prompt = build_infill_prompt(engine.tokenizer, prefix, suffix).tokens
    ids = torch.tensor([prompt], device=engine.device)
    theirs_decode, theirs_total = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            runs = {}
            for n in (1, generated):
                started = time.perf_counter()
                reference.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
                runs[n] = time.perf_counter() - started
            theirs_decode.append((runs[generated] - runs[1]) / max(1, generated - 1))
            theirs_total.append(runs[generated])
    ours, theirs = statistics.median(ours_decode), statistics.median(theirs_decode)
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": generated,
        "ours_tok_s": 1 / ours,
        "transformers_tok_s": 1 / theirs,
        "ours_total_s": statistics.median(ours_total),
        "transformers_total_s": statistics.median(theirs_total),
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


SHORT_PROMPT_TOKENS = 16
"""Prefix of the short prompt that decode is also timed after (with its suffix and FIM tokens, ~18)."""


def quant_worker(model_path: str, dtype: str, quantize: str, new_tokens: int, compile: str = "off") -> dict:
    """Runs in its own process: load, measure memory, prefill and decode (eager, and with compile
    "auto" or "on" also compiled, side by side: decode_tok_s is then what the server would use)."""
    started = time.perf_counter()
    engine = load_engine(
        model_path, "cpu", dtype, quantize, max_seq_len=1024, cache_slots=1, past_trained_length=True
    ).engine
    load_s = time.perf_counter() - started
    tokenizer = engine.tokenizer
    prefix, suffix = source_around_function_end(tokenizer, 400, 100)
    engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=2))  # warm-up
    engine.reset_cache()
    first = engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=1)).stats
    engine.reset_cache()
    s = engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=new_tokens, prompt_lookup=False)).stats
    figures = {
        "load_s": load_s,
        # Read after generating: right after loading, mmapped safetensors weights are not yet
        # paged in, so the figure would miss most of them.
        "rss_mb": rss_mb(),
        # the mean of two prefills, as llama-bench's -r 2 reports
        "prefill_tok_s": statistics.mean(t.prefilled_tokens / t.prefill_s for t in (first, s)),
        "eager_decode_tok_s": decode_tok_s(s),
        "prompt_tokens": s.prompt_tokens,
    }
    if compile != "off":
        report = engine.prepare_decode(compile)
        figures["decode_step"] = report.describe()
        if engine.compiled is not None:
            decoder, rates = engine.compiled, {"eager": [], "compiled": []}
            for _ in range(2):  # alternate, on a cold cache each time (prefill not timed here)
                for kind in rates:
                    engine.compiled = decoder if kind == "compiled" else None
                    rates[kind].append(decode_rate(engine, prefix, suffix, new_tokens))
            figures["eager_decode_tok_s"] = max(rates["eager"])
            figures["compiled_decode_tok_s"] = max(rates["compiled"])
    # what the server would decode at: compiled where that is used
    figures["decode_tok_s"] = figures.get("compiled_decode_tok_s", figures["eager_decode_tok_s"])
    short_prefix, short_suffix = source_around_function_end(tokenizer, SHORT_PROMPT_TOKENS, 4)
    short = decode_stats(engine, short_prefix, short_suffix, new_tokens)
    figures["short_decode_tok_s"], figures["short_prompt_tokens"] = decode_tok_s(short), short.prompt_tokens
    try:  # right after the decodes it bounds, in the same process (the machine's rate drifts)
        figures["read_bound"] = dataclasses.asdict(read_bound.measure(engine.model, engine.cache.keys[0].dtype))
        figures["kv_values_per_position"] = read_bound.kv_values_per_position(engine.model)
    except RuntimeError as e:  # no C compiler: the tables show "-"
        figures["read_bound_problem"] = str(e)
    return figures


def mean_depth(prompt_tokens: int, new_tokens: int) -> float:
    """The cache's mean fill while decoding new_tokens after a prompt (the read bound's depth)."""
    return prompt_tokens + (new_tokens - 1) / 2


def fraction_of_bound(row: dict, tokens_per_s: float, depth: float, weight_bytes: int | None = None,
                      kv_element_bytes: int | None = None) -> float | None:  # fmt: skip
    """tokens_per_s as a fraction of what reading the weights at the rate quant_worker measured
    allows; by default our weights and cache, else weight_bytes and kv_element_bytes' cache
    (another engine's, read at the same rate). None where the rate was not measured."""
    if "read_bound" not in row:
        return None
    bound = read_bound.ReadBound(**row["read_bound"])
    if weight_bytes is not None:
        per_position = row["kv_values_per_position"] * kv_element_bytes
        bound = read_bound.ReadBound(weight_bytes, per_position, bound.gb_per_s)
    return tokens_per_s / bound.tokens_per_s(depth)


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def worker_command(model_path: Path, dtype: str, quantize: str, new_tokens: int, compile: str) -> list[str]:
    """quant_worker in a process of its own (so that its memory is its own)."""
    return [
        sys.executable,
        "-m",
        "engine.bench",
        "--worker",
        str(model_path),
        dtype,
        quantize,
        str(new_tokens),
        compile,
    ]


def bench_quantization(model_path: Path, new_tokens: int, compile: str) -> dict[str, dict]:
    rows = {}
    for label, dtype, quantize in [
        ("fp32", "float32", "none"),
        ("bf16", "bfloat16", "none"),
        ("int8", "bfloat16", "int8"),
        ("int4", "bfloat16", "int4"),
    ]:
        command = worker_command(model_path, dtype, quantize, new_tokens, compile)
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def compiled_cell(row: dict) -> str:
    """ "tokens/s (speed-up over eager)" of the compiled decode step, "-" where it is not used."""
    if "compiled_decode_tok_s" not in row:
        return "-"
    return f"{row['compiled_decode_tok_s']:.1f} ({row['compiled_decode_tok_s'] / row['eager_decode_tok_s']:.2f}x)"


def decode_stats(engine: InfillEngine, prefix: str, suffix: str, new_tokens: int, lookup: bool = False):
    """The stats of one completion from a cold cache."""
    engine.reset_cache()
    params = SamplingParams(max_new_tokens=new_tokens, prompt_lookup=lookup)
    return engine.complete(prefix, suffix, params=params).stats


def decode_rate(engine: InfillEngine, prefix: str, suffix: str, new_tokens: int, lookup: bool = False) -> float:
    """Decode tokens/s of one completion from a cold cache."""
    return decode_tok_s(decode_stats(engine, prefix, suffix, new_tokens, lookup))


def decode_tok_s(stats) -> float:
    """Tokens/s after the first one (which the prefill produced)."""
    return (stats.generated_tokens - 1) / stats.decode_s


def bench_cuda_7b(new_tokens: int, tokenizer_path: Path) -> dict[str, dict]:
    """Full-size random Code Llama 7B on the GPU, bf16 / int8 / int4 (torch) / nf4 (bitsandbytes):
    time to first token, decode eager vs compiled (CUDA graphs) vs compiled + prompt lookup."""
    peak = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
    name = torch.cuda.get_device_name()
    bandwidth = next((bw for key, bw in peak.items() if key in name), float("nan"))
    tok = Tokenizer(tokenizer_path)
    rows = {}
    for mode in ("none", "int8", "int4", "nf4"):
        rows[mode] = cuda_7b_row(mode, tok, new_tokens, bandwidth)
        torch.cuda.empty_cache()
    return rows


def cuda_7b_row(mode: str, tok: Tokenizer, new_tokens: int, bandwidth: float) -> dict:
    from engine.checkpoints import build_model

    args = MODEL_CONFIGS["7B"]
    prefix, suffix = source_around_function_end(tok, 1500, 500)
    torch.manual_seed(0)
    with torch.device("cuda"):
        state = {k: v.to(torch.bfloat16) for k, v in Transformer(args).state_dict().items()}
    model = build_model(args, state, torch.device("cuda"), torch.bfloat16, mode)
    del state
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    engine = InfillEngine(model, tok, max_seq_len=4096, cache_slots=1)
    engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=4))  # warm-up
    engine.reset_cache()
    first = engine.complete(prefix, suffix, params=SamplingParams(max_new_tokens=1))
    row = {"ttft_ms": 1000 * first.stats.total_s, "eager_tok_s": decode_rate(engine, prefix, suffix, new_tokens)}
    row["decode_step"] = engine.prepare_decode("on").describe()
    if engine.compiled is not None:
        row["compiled_tok_s"] = decode_rate(engine, prefix, suffix, new_tokens)
        row["compiled_lookup_tok_s"] = decode_rate(engine, prefix, suffix, new_tokens, lookup=True)
    best = max(row.get("compiled_tok_s", 0.0), row["eager_tok_s"])
    row["weights_gb"] = weight_bytes / 1e9
    row["bandwidth_fraction"] = weight_bytes * best / bandwidth
    return row


CUDA_HEADERS = ["weights", "TTFT ms", "decode tokens/s eager / compiled / compiled + lookup", "weights GB",
                "of bandwidth bound", "step"]  # fmt: skip
CUDA_DECODE_KINDS = ("eager_tok_s", "compiled_tok_s", "compiled_lookup_tok_s")

LLAMA_TYPES = [("fp32", "float32", "none", "f32"), ("bf16", "bfloat16", "none", "bf16"),
               ("int8", "bfloat16", "int8", "q8_0"), ("int4", "bfloat16", "int4", "Q4_0")]  # fmt: skip
"""(our label, our dtype, our quantization, llama.cpp's type)."""
QUANTIZED_FROM_F32 = {"Q4_0"}
"""llama.cpp types its converter cannot write: llama-quantize makes them from the F32 file."""


def llama_cpp_ggufs(llama_dir: Path, model_path: Path, workdir: Path) -> dict[str, Path]:
    """The weights as GGUF, converted by llama.cpp's own script and quantizer."""
    from engine.checkpoints import load_model
    from engine.formats.hf import save_hf

    model, tok, _ = load_model(model_path, "cpu", "float32")
    hf = save_hf(workdir / "hf", model, tok.path)
    del model
    env = {**os.environ, "PYTHONPATH": str(llama_dir / "gguf-py")}  # that tree's own gguf package
    files = {}
    for label, _, _, kind in LLAMA_TYPES:
        out = workdir / f"{label}.gguf"
        if kind in QUANTIZED_FROM_F32:
            command = [str(llama_dir / "build" / "bin" / "llama-quantize"), str(files["fp32"]), str(out), kind]
        else:
            command = [sys.executable, str(llama_dir / "convert_hf_to_gguf.py"), str(hf), "--outtype", kind,
                       "--outfile", str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env=env)
        files[label] = out
    return files


LLAMA_BENCH_KV_BYTES = 2
"""Bytes a cached key or value takes in llama-bench: its default cache type, f16 (type_k / type_v)."""


def gguf_decode_bytes(llama_dir: Path, gguf: Path) -> int:
    """Bytes of the tensors llama.cpp reads in full for a token: all but the token embedding (a
    row of it), unless it is also the output layer. Read by that tree's own gguf package."""
    code = (
        "import sys, gguf\n"
        "tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(sys.argv[1]).tensors}\n"
        "rows_only = {'token_embd.weight'} if 'output.weight' in tensors else set()\n"
        "print(sum(size for name, size in tensors.items() if name not in rows_only))"
    )
    env = {**os.environ, "PYTHONPATH": str(llama_dir / "gguf-py")}
    done = subprocess.run([sys.executable, "-c", code, str(gguf)], capture_output=True, text=True, check=True, env=env)
    return int(done.stdout)


def bound_summary(rounds: list[tuple[float | None, float | None]]) -> str:
    """Each round's 'ours / llama.cpp' fractions of the read bound; from three rounds their medians."""
    if any(None in pair for pair in rounds):
        return "-"
    if len(rounds) < 3:
        return ", ".join(f"{percent(ours)} / {percent(theirs)}" for ours, theirs in rounds)
    ours, theirs = (statistics.median(side) for side in zip(*rounds, strict=True))
    return f"{percent(ours)} / {percent(theirs)} (medians)"


def llama_bench(
    llama_dir: Path, gguf: Path, threads: int, prompt: int, new_tokens: int, depths: tuple[int, ...]
) -> tuple[float, dict[int, float], str]:
    """(prefill tokens/s, {depth: decode tokens/s}, a note) as llama-bench measures them.

    Decode is timed after `depth` tokens already in the cache (-d), as ours is after its prompt:
    llama-bench's plain tg test starts from an empty cache, and on a small model that is 2-3x
    faster than after a 520-token prompt (Q8_0 on the shipped model: 1,383 vs 491 tokens/s).

    On a CPU where llama.cpp's repacked (AMX / extra-buffer) kernels crash, as its Q8_0 and
    Q4_0 ones did here (SIGSEGV, 2-core Xeon with AMX), it is run again with --repack 0."""
    command = [str(llama_dir / "build" / "bin" / "llama-bench"), "-m", str(gguf), "-p", str(prompt),
               "-n", str(new_tokens), "-d", ",".join(map(str, (0, *depths))), "-t", str(threads), "-r", "2",
               "-o", "json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    note = ""
    if done.returncode < 0:
        note = f"llama-bench died with signal {-done.returncode}; --repack 0"
        done = subprocess.run([*command, "--repack", "0"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({done.returncode}): {done.stderr[-500:]}")
    runs = json.loads(done.stdout)
    prefill = next(r["avg_ts"] for r in runs if r["n_prompt"] == prompt and r["n_gen"] == 0 and r["n_depth"] == 0)
    decode = {
        depth: next(r["avg_ts"] for r in runs if r["n_gen"] == new_tokens and r["n_depth"] == depth) for depth in depths
    }
    return prefill, decode, note


def ratio(ours: float, theirs: float, digits: int = 0) -> str:
    return f"{ours / theirs:.2f}x ({ours:.{digits}f} / {theirs:.{digits}f})"


def summary(rounds: list[tuple[float, float]], digits: int = 0) -> str:
    """Each round's (ours, theirs) as a ratio, side by side; from three rounds on, their median and
    range instead (a single round on this shared machine swung by up to 1.5x either way)."""
    if len(rounds) < 3:
        return ", ".join(ratio(ours, theirs, digits) for ours, theirs in rounds)
    ratios = sorted(ours / theirs for ours, theirs in rounds)
    return f"median {statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}x, {len(ratios)} rounds)"


def bench_llama_cpp(llama_dir: Path, model_path: Path, workdir: Path, compile: str, rounds: int = 2) -> list[list[str]]:
    """Rows: weights, then per round 'prefill ours / llama.cpp', 'decode ours / llama.cpp' after
    the ~520-token prompt and after a short one (~18 tokens), and a note."""
    threads = torch.get_num_threads()
    files = llama_cpp_ggufs(llama_dir, model_path, workdir)
    rows = []
    for label, dtype, quantize, kind in LLAMA_TYPES:
        their_bytes = gguf_decode_bytes(llama_dir, files[label])
        prefill, decode, short, bounds, notes = [], [], [], [], set()
        for _ in range(rounds):  # alternate: ours, theirs, ours, theirs (the machine is noisy)
            command = worker_command(model_path, dtype, quantize, 64, compile)
            ours = json.loads(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.split("\n")[-2]
            )
            depths = (ours["short_prompt_tokens"], ours["prompt_tokens"])
            theirs = llama_bench(llama_dir, files[label], threads, ours["prompt_tokens"], 64, depths)
            notes.add(theirs[2])
            prefill.append((ours["prefill_tok_s"], theirs[0]))
            decode.append((ours["decode_tok_s"], theirs[1][ours["prompt_tokens"]]))
            short.append((ours["short_decode_tok_s"], theirs[1][ours["short_prompt_tokens"]]))
            # both sides' decode after the short prompt against reading their own weights at the
            # rate measured in our worker this round
            depth = mean_depth(ours["short_prompt_tokens"], 64)
            bounds.append((
                fraction_of_bound(ours, short[-1][0], depth),
                fraction_of_bound(ours, short[-1][1], depth, their_bytes, LLAMA_BENCH_KV_BYTES),
            ))  # fmt: skip
        cells = [summary(prefill), summary(decode, 1), summary(short, 1), bound_summary(bounds)]
        rows.append([f"{label} vs {kind.upper()}", *cells, "; ".join(sorted(notes - {""}))])
    return rows


def build_benchmark_model(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model:
        return Path(args.model)
    tokenizer = Path(args.tokenizer) if args.tokenizer else default_model_path() / "tokenizer.model"
    torch.manual_seed(0)
    model = Transformer(MODEL_CONFIGS[args.config])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return save_checkpoint(workdir / "model", model, tokenizer, dtype=torch.bfloat16)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, dtype, quantize, new_tokens, compile = sys.argv[2:7]
        print(json.dumps(quant_worker(path, dtype, quantize, int(new_tokens), compile)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: random weights of --config)")
    parser.add_argument("--config", default="7B-2layer", choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--tokenizer", help="tokenizer for random weights (default: the shipped model's)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cold-every", type=int, default=10, help="measure a cold keystroke every N")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: keys,decode,quant,cuda")
    parser.add_argument("--llama-cpp", type=Path, metavar="DIR", help="a built llama.cpp tree to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="llama.cpp section: rounds (from 3: median and range)")
    parser.add_argument(
        "--compile", default="auto", choices=COMPILE_MODES,
        help="quant and llama.cpp sections: also time the compiled decode step where it is used (as the server)",
    )  # fmt: skip
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        path = build_benchmark_model(args, Path(workdir))
        engine = load_engine(path, "cpu", args.dtype, max_seq_len=4096, cache_slots=1, past_trained_length=True).engine
        model, tokenizer = engine.model, engine.tokenizer
        name = path.name if args.model else args.config
        print(f"model {name}: {model.num_parameters() / 1e6:.0f}M parameters, {engine.dtype}, ", end="")
        print(f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
        print(f"machine: {describe_machine()}")
        if "keys" not in skip:
            k = bench_keystrokes(engine, args.cold_every)
            print(f"\n## keystroke latency: typing {k['keystrokes']} characters, ~{k['prompt_tokens']}-token prompt")
            print("(time from request to the first generated token)")
            table(
                ["cache", "mean ms", "p95 ms", "tokens prefilled"],
                [
                    ["reused", f"{k['warm_mean_ms']:.1f}", f"{k['warm_p95_ms']:.1f}", f"{k['prefilled_mean']:.1f}"],
                    [
                        f"cold ({k['cold_samples']} samples)",
                        f"{k['cold_mean_ms']:.1f}",
                        f"{k['cold_p95_ms']:.1f}",
                        str(k["prompt_tokens"]),
                    ],
                ],
            )
            mean_ratio, p95_ratio = k["cold_mean_ms"] / k["warm_mean_ms"], k["cold_p95_ms"] / k["warm_p95_ms"]
            print(f"reuse speed-up: mean {mean_ratio:.1f}x, p95 {p95_ratio:.1f}x")
        if "decode" not in skip:
            d = bench_decode_vs_transformers(engine, args.new_tokens)
            print(f"\n## decode: {d['new_tokens']} tokens after a {d['prompt_tokens']}-token prompt, greedy")
            table(
                ["", "decode tokens/s", "whole request s"],
                [
                    ["codellama-lsp", f"{d['ours_tok_s']:.1f}", f"{d['ours_total_s']:.2f}"],
                    ["transformers generate", f"{d['transformers_tok_s']:.1f}", f"{d['transformers_total_s']:.2f}"],
                ],
            )
            print(f"decode speed-up: {d['ours_tok_s'] / d['transformers_tok_s']:.2f}x")
        del engine, model
        if "quant" not in skip:
            rows = bench_quantization(path, args.new_tokens, args.compile)
            bf16 = rows["bf16"]["eager_decode_tok_s"]
            print(f"\n## CPU precision and quantization (decode step: --compile {args.compile})")
            headers = [
                "weights",
                "decode tokens/s eager",
                "vs bf16",
                "compiled",
                "used: of read bound",
                "prefill tokens/s",
            ]
            table(
                [*headers, "resident MB", "step"],
                [
                    [
                        label,
                        f"{r['eager_decode_tok_s']:.1f}",
                        f"{r['eager_decode_tok_s'] / bf16:.2f}x",
                        compiled_cell(r),
                        percent(
                            fraction_of_bound(r, r["decode_tok_s"], mean_depth(r["prompt_tokens"], args.new_tokens))
                        ),
                        f"{r['prefill_tok_s']:.0f}",
                        f"{r['rss_mb']:.0f}",
                        r.get("decode_step", "decode step eager"),
                    ]
                    for label, r in rows.items()
                ],
            )
        if args.llama_cpp is None:
            print("\n## llama.cpp: skipped (give --llama-cpp DIR, a llama.cpp tree with llama-bench built)")
        else:
            rows = bench_llama_cpp(args.llama_cpp, path, Path(workdir), args.compile, args.rounds)
            print(f"\n## ours / llama.cpp, same weights, {torch.get_num_threads()} threads each, {args.rounds} rounds")
            print("(prefill: a ~520-token prompt; decode: 64 tokens after that prompt, and after a ~18-token")
            shown = "tokens/s in brackets" if args.rounds < 3 else "each round's ratio from tokens/s"
            print(f"one; llama-bench -p/-n with -d at the same depths; {shown})")
            print("read bound: tokens/s that reading each side's weights and cache allows at the rate")
            print("engine.read_bound measured in our worker that round (a plain read, same threads)")
            headers = ["weights", "prefill ours / llama.cpp", "decode after the prompt", "decode after 18 tokens"]
            table([*headers, "after 18: of the read bound, ours / llama.cpp", "note"], rows)
        if "cuda" not in skip and torch.cuda.is_available():
            rows = bench_cuda_7b(args.new_tokens, tokenizer.path)
            print(f"\n## {torch.cuda.get_device_name()}: Code Llama 7B shapes, random weights, 2,000-token prompt")
            table(
                [
                    "weights",
                    "TTFT ms",
                    "decode tokens/s eager / compiled / compiled + lookup",
                    "weights GB",
                    "of bandwidth bound",
                    "step",
                ],
                [
                    [
                        mode,
                        f"{r['ttft_ms']:.0f}",
                        " / ".join(f"{r[k]:.1f}" if k in r else "-" for k in CUDA_DECODE_KINDS),
                        f"{r['weights_gb']:.1f}",
                        f"{r['bandwidth_fraction']:.0%}",
                        r["decode_step"],
                    ]
                    for mode, r in rows.items()
                ],
            )


def table(headers: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, ready for README's performance section."""
    print("| " + " | ".join(headers) + " |")
    print("|" + " --- |" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
