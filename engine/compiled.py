"""The decode step made fast: one call for the one-token forward against the KV cache.

A decoded token on a small model on CPU (the shipped one), and on any model on a GPU, costs
mostly per-op overhead: Python, dispatch, dozens of tiny kernels. Two ways around it:

- on CPU, the token written out in C (engine.cpu_decode): a kernel per weight format, one call a
  token. On the shipped model it decodes 3-7x faster than eager and 1.2-4.6x faster than
  torch.compile's step did (2-core EPYC, 2026-12-02), and with 7B-sized weights its one-row
  products read memory faster than torch's kernels;
- on CUDA, and on CPU for a model the C step does not run (a LoRA layer, a bias),
  `Transformer.decode_static` under torch.compile: fixed shapes at every position, so typing
  never recompiles it, and CUDA graphs on a GPU (`reduce-overhead`, as gpt-fast does). On CPU
  it is tried only for models under 1 GiB: with 7B-sized weights it measured no gain.

Whatever it is, the step is used only where it was measured faster than eager on this machine
and gave the same greedy tokens (up to ties that rounding breaks either way: see disagreement);
it is built at load, and the server keeps answering with the eager step meanwhile
(engine.session.InfillEngine.prepare_decode). Compiled code is cached across restarts in private
folders (use_private_compile_cache, engine.cpu_decode): inductor's default,
/tmp/torchinductor_<user>, is a place another local user could plant code in.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from engine.cpu_decode import CpuDecode, unsupported
from engine.generate import decode_one_token, prefill, verify
from engine.model import KVCache, Transformer
from engine.quantize import Int4Linear, Int8Linear
from engine.user_cache import private_cache_or_temporary

log = logging.getLogger(__name__)

CPU_COMPILE_MAX_WEIGHT_BYTES = 1 << 30
"""auto uses torch.compile on CPU only for models whose weights are smaller than this."""
WARM_UP_FILL = 0.75
"""torch.compile's step is timed this far into the cache: it attends over the whole cache at
every position, eager over the positions so far, and a server's prompts fill most of it."""
CHECK_PROMPT = 256
"""The C step, which attends over the positions so far as eager does, is timed after this many."""
CHECK_TOKENS = 24
"""Greedy tokens the compiled step must reproduce (up to ties: see disagreement) before it is used."""
TIE_ULPS = 2
"""Eager's two candidates at most this many units of rounding (eps x the logits' scale) apart: a tie."""
CLOSE_FRACTION = 0.05
"""The compiled step's logits within this fraction of their scale of eager's (rounding stays ~0.5%)."""
TIMING_ROUNDS = 3
"""Eager and compiled runs alternate this many times; each keeps its fastest."""


@dataclass
class DecodeReport:
    """What became of the compiled decode step (the server's status shows it)."""

    state: str = "eager"
    """eager (not tried), compiling, compiled (in use), or kept-eager (tried, not used)."""
    detail: str = ""
    step: str = ""
    """Which fast step: "C" (engine.cpu_decode) or "torch.compile"."""
    compile_s: float | None = None
    speedup: float | None = None
    """Eager ms per token / compiled ms per token, as measured at load."""

    def describe(self) -> str:
        figures = [self.step] if self.step else []
        if self.speedup is not None:
            figures.append(f"{self.speedup:.2f}x eager")
        if self.compile_s is not None:
            figures.append(f"compiled in {self.compile_s:.0f} s")
        return (
            f"decode step {self.state}"
            + (f" ({', '.join(figures)})" if figures else "")
            + (f": {self.detail}" if self.detail else "")
        )


def use_private_compile_cache() -> None:
    """Point inductor's caches at a folder only this user can write, unless TORCHINDUCTOR_CACHE_DIR
    says where. Call it before compiling, on the thread that starts the compile (it sets the
    environment, which another thread must not be reading meanwhile)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    folder, why = private_cache_or_temporary("torch-compile")
    if why:
        log.warning("compiled code is not kept across restarts: %s", why)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def worth_trying(model: Transformer, device: torch.device) -> str:
    """Why auto should not build a fast step for this model here ("" if it should)."""
    if device.type == "cuda" or not unsupported(model):
        return ""
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if weight_bytes >= CPU_COMPILE_MAX_WEIGHT_BYTES:
        return f"{weight_bytes / 2**30:.1f} GiB of weights: decode is memory-bound on CPU, compiling gains nothing"
    return ""


def make_step(model: Transformer, device: torch.device) -> DecodeStep:
    """The C step on CPU where it runs the model, else torch.compile's."""
    if device.type == "cpu" and not unsupported(model):
        return CpuDecode(model)
    return CompiledDecode(model, device)


class CompiledDecode:
    """`Transformer.decode_static` compiled for caches of one shape; call it per token."""

    name = "torch.compile"
    attends_whole_cache = True

    def __init__(self, model: Transformer, device: torch.device) -> None:
        self.model, self.device = model, device
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs
        self._step = torch.compile(model.decode_static, mode=mode, fullgraph=True, dynamic=False)
        self._views: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def slot_views(self, cache: KVCache, slot: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One slot's keys and values per layer, as (1, KVH, L, hd) views (made once per cache and slot)."""
        key = (id(cache), slot)
        if key not in self._views:
            keys = [k[slot : slot + 1] for k in cache.keys]
            values = [v[slot : slot + 1] for v in cache.values]
            if self.device.type == "cuda":
                # CUDA graphs would copy an input whose address may change into a static
                # buffer on every call: the cache's addresses never change.
                for t in keys + values:
                    torch._dynamo.mark_static_address(t)
            self._views[key] = (keys, values)
        return self._views[key]

    def verify(self, tokens: list[int], pos: int, cache: KVCache, slot: int) -> torch.Tensor:
        """A speculative draft is checked by the eager forward (batched, it reads the weights once;
        a graph would be made per draft length)."""
        return verify(self.model, tokens, pos, cache, slot)

    def forget(self, cache: KVCache) -> None:
        """Drop the views of a cache no longer used (so that its memory can be freed)."""
        self._views = {key: views for key, views in self._views.items() if key[0] != id(cache)}

    @torch.inference_mode()
    def __call__(self, token: int, pos: int, cache: KVCache, slot: int) -> torch.Tensor:
        """Logits (vocab,) for the token after `token`, which sits at position pos."""
        keys, values = self.slot_views(cache, slot)
        tokens = torch.tensor([[token]], dtype=torch.long, device=self.device)
        positions = torch.tensor([pos], dtype=torch.long, device=self.device)
        logits = self._step(tokens, positions, keys, values)
        # A CUDA graph's output is overwritten by its next replay.
        return logits.clone() if self.device.type == "cuda" else logits


DecodeStep = CpuDecode | CompiledDecode
"""Either fast step: called as step(token, pos, cache, slot) -> logits (vocab,)."""


def greedy_run(
    decode, model: Transformer, cache: KVCache, prompt: list[int], steps: int, forced: list[int] | None = None
) -> tuple[list[int], list[torch.Tensor], float]:
    """(greedy tokens, the logits each was picked from, seconds per token) decoding `steps` tokens
    after prompt, already in slot 0. forced: feed these tokens instead of the step's own picks, so
    that two steps are compared on the same sequence (a tie broken the other way derails nothing)."""
    logits, _ = prefill(model, prompt, 0, cache, 0)
    assert logits is not None
    tokens, seen, pos = [], [], len(prompt)
    started = time.perf_counter()
    for i in range(steps):
        token = forced[i] if forced is not None else int(torch.argmax(logits))
        tokens.append(token)
        seen.append(logits)
        logits = decode(token, pos)
        pos += 1
    return tokens, seen, (time.perf_counter() - started) / steps


def rounding_eps(model: Transformer) -> float:
    """Relative rounding of the decode step's activations: the model's dtype, or bf16 where quantized
    layers compute in it (torch's CPU int8/int4 kernels, tinygemm)."""
    dtypes = {model.model.embed_tokens.weight.dtype}
    if any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules()):
        dtypes.add(torch.bfloat16)
    return max(torch.finfo(d).eps for d in dtypes)


def disagreement(expected: list[int], eager: list[torch.Tensor], compiled: list[torch.Tensor], eps: float) -> str:
    """Why the compiled step's logits (for the same tokens fed) are not eager's up to rounding; "" if they are.

    Exact greedy identity cannot be asked of every dtype: the compiled step sums in another
    order, and where activations are rounded to bf16 (quantized layers) a last-bit difference
    before a rounding becomes a unit in bf16's last place, and logits that eager rounds into
    a tie (or near one) can then fall the other way. So the compiled step may pick another token
    only where eager's two candidates lie within TIE_ULPS units of rounding of each other, and
    its logits must stay within CLOSE_FRACTION of their scale: a wrong step misses both."""
    for step, (token, want, got) in enumerate(zip(expected, eager, compiled, strict=True)):
        want, got = want.float(), got.float()
        scale = float(want.abs().max())
        error = float((got - want).abs().max())
        if error > CLOSE_FRACTION * scale:
            return f"its logits differed by {error:.3g} (of {scale:.3g}) at step {step}"
        pick = int(got.argmax())
        margin = float(want[token] - want[pick])
        if pick != token and margin > TIE_ULPS * eps * scale:
            return f"it picked token {pick} over eager's {token} (margin {margin:.3g}) at step {step}"
    return ""


def build_compiled_decode(
    model: Transformer, cache_len: int, force: bool = False
) -> tuple[DecodeStep | None, DecodeReport]:
    """Build the fast decode step for caches of cache_len positions (make_step), check it gives
    eager's greedy tokens and time both side by side on a scratch cache (the engine's own is left
    alone).

    Returns the step if it is to be used (faster, or force) and what was measured."""
    weight = model.model.embed_tokens.weight
    device, dtype = weight.device, weight.dtype
    use_private_compile_cache()
    if model.rope_cos.shape[0] < cache_len:
        model.reset_rope(cache_len)
    steps = min(CHECK_TOKENS, cache_len // 4)
    started = time.perf_counter()
    step = make_step(model, device)
    if step.attends_whole_cache:  # compiled for this cache length: checked on one as long
        fill, scratch_len = int(cache_len * WARM_UP_FILL), cache_len
    else:  # the C step reads the filled positions only: a short scratch cache does (a full one
        # would be gigabytes for a 7B at 4,096 positions, and all of it written)
        fill, scratch_len = CHECK_PROMPT, min(cache_len, CHECK_PROMPT + steps)
    scratch = KVCache(model.args, scratch_len, 1, device, dtype)
    prompt = [(7 * i + 3) % model.args.vocab_size for i in range(min(fill, scratch_len - steps))]
    eager = lambda token, pos: decode_one_token(model, token, pos, scratch, 0)  # noqa: E731
    fast = lambda token, pos: step(token, pos, scratch, 0)  # noqa: E731
    with torch.inference_mode():
        greedy_run(fast, model, scratch, prompt, 2)  # compiles (or loads from the cache)
    report = DecodeReport(step=step.name, compile_s=time.perf_counter() - started)
    eager_s, compiled_s = [], []
    for _ in range(TIMING_ROUNDS):
        expected, eager_logits, seconds = greedy_run(eager, model, scratch, prompt, steps)
        eager_s.append(seconds)
        _, logits, seconds = greedy_run(fast, model, scratch, prompt, steps, forced=expected)
        compiled_s.append(seconds)
        if why := disagreement(expected, eager_logits, logits, rounding_eps(model)):
            report.state, report.detail = "kept-eager", why
            step.forget(scratch)
            return None, report
    step.forget(scratch)  # the engine's own cache is what it runs against from now on
    report.speedup = min(eager_s) / min(compiled_s)
    if report.speedup > 1 or force:
        report.state = "compiled"
        return step, report
    report.state, report.detail = "kept-eager", "not faster than eager here"
    return None, report
