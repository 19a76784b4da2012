"""`codellama-lsp check`: is the model found, where does it run, what does it cost, does it answer?

The first thing a user runs when completions do not appear. It loads the model exactly
as the server does (lsp.loading) and times two completions: a cold one, and one with a
character more, which shows whether the KV cache is reused across keystrokes.
"""

from __future__ import annotations

import argparse
import sys
import time

from engine.machine import describe_machine
from lsp.loading import ModelSpec, load, tokenizer_file
from lsp.settings import BackendSettings, Settings

PREFIX = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n    return '
SUFFIX = "\n\n\nprint(fibonacci(10))\n"


def memory_bytes() -> tuple[int | None, str]:
    """(resident set size, how it was measured) of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss, "RSS"
    except ImportError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (peak if sys.platform == "darwin" else peak * 1024), "peak RSS"
    except ImportError:
        return None, "RSS"


def mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:,.0f} MiB"


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__})"
    return f"{device} ({torch.get_num_threads()} threads, torch {torch.__version__})"


def run_check(args: argparse.Namespace, out=sys.stdout) -> int:
    def say(label: str, value: str) -> None:
        print(f"{label + ':' if label else '':<18}{value}", file=out, flush=True)

    backend = BackendSettings(args.backend, args.backend_kind, args.backend_api_key_env, args.backend_model)
    settings = Settings(
        model=args.model, device=args.device, quantize=args.quantize, max_tokens=args.max_tokens, backend=backend
    )
    # Compiled at the end, in the foreground, to report on it (the test completions run eager).
    spec = ModelSpec.from_settings(settings, args.dtype, args.threads, compile="off")
    if spec.backend is not None:
        return check_backend(spec, args.max_tokens, say)
    try:
        from engine.loader import model_path

        path = model_path(spec.model)
    except Exception as e:
        say("model", f"NOT FOUND: {e}")
        return 1
    say("model", str(path))
    try:
        served = load(spec)
    except Exception as e:
        say("load", f"FAILED: {e}")
        return 1
    loaded, engine = served.loaded, served.engine
    say("format", loaded.info.format)
    say("parameters", f"{loaded.parameters / 1e6:,.1f}M")
    say("device", device_description(loaded.device))
    say("machine", describe_machine())
    say("dtype", loaded.dtype)
    say("quantization", loaded.quantization)
    say("load time", f"{served.load_s:.2f} s")
    rss, how = memory_bytes()
    say("memory", f"{how} {mib(rss)}; KV cache {mib(engine.cache_bytes())} ({engine.max_seq_len} tokens x 2 slots)")
    if loaded.device.startswith("cuda"):
        import torch

        say("GPU memory", f"{mib(torch.cuda.memory_allocated())} allocated")

    completed = two_completions(engine, args.max_tokens, say, "the KV cache")
    from lsp.cli import compile_default

    mode = compile_default()
    say("decode step", engine.prepare_decode(mode).describe() + f" (as the server's --compile {mode})")
    return 0 if completed else 1


def check_backend(spec: ModelSpec, max_tokens: int, say) -> int:
    """A shared inference server: reachable, which model, our tokenizer's vocabulary, latency,
    token healing, one test completion and one keystroke (the server's prefix cache)."""
    from engine.remote import RemoteEngine
    from engine.tokenizer import Tokenizer
    from engine.wire import BackendError

    assert spec.backend is not None
    say("backend", f"{spec.backend.url} ({spec.backend.kind})")
    try:
        tokenizer = Tokenizer(tokenizer_file(spec.model))
        say("tokenizer", f"{tokenizer.path} ({tokenizer.vocab_size} tokens, stays on this machine)")
        started = time.perf_counter()
        engine = RemoteEngine(spec.backend, tokenizer)
        say("reachable", f"yes, GET /v1/models in {(time.perf_counter() - started) * 1000:.0f} ms")
    except (BackendError, ValueError, OSError) as e:
        say("backend", f"FAILED: {e}")
        return 1
    served = engine.served
    vocab = "not reported" if served.vocab_size is None else f"{served.vocab_size} tokens (matches the tokenizer)"
    say("model", f"{served.name}; vocabulary {vocab}; {engine.max_seq_len} positions per request")
    if not two_completions(engine, max_tokens, say, "the server's prefix cache"):
        return 1
    heal = "logit bias honoured (SPM with token healing)" if engine.can_heal else "logit bias ignored: SPM sent as PSM"
    say("token healing", heal)
    return 0


def two_completions(engine, max_tokens: int, say, cache: str) -> bool:
    """A cold completion, then one a character further (what `cache` reused shows whether keystrokes
    reuse it); False when the backend failed."""
    from engine.sampling import SamplingParams
    from engine.wire import BackendError

    params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, time_budget_s=30.0)
    for label, prefix in (("test completion", PREFIX), ("next keystroke", PREFIX + "f")):
        started = time.perf_counter()
        try:
            completion = engine.complete(prefix, SUFFIX, params=params)
        except BackendError as e:
            say(label, f"FAILED: {e}")
            return False
        ms = (time.perf_counter() - started) * 1000
        s = completion.stats
        text = completion.text if len(completion.text) <= 120 else completion.text[:117] + "..."
        say(label, f"{ms:.0f} ms: {text!r}")
        say(
            "",
            f"prompt {s.prompt_tokens} tokens ({s.reused_tokens} from {cache}, {s.prefilled_tokens} prefilled "
            f"in {s.prefill_s * 1000:.0f} ms); {s.generated_tokens} generated in {s.decode_s * 1000:.0f} ms "
            f"({s.decode_tokens_per_s:.1f} tokens/s), stopped at {s.stop_reason}",
        )
    return True
