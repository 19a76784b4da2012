"""The inference worker: one thread, newest request per document, cancellation, loading."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.loader import LoadedModel
from engine.pipeline import Snapshot
from engine.session import InfillEngine
from lsp.completer import CompletionOutcome, CompletionTask
from lsp.loading import ModelSpec, ServedModel
from lsp.settings import Settings
from lsp.worker import InferenceWorker
from tests.lsp.helpers import LONG_SCRIPT
from tests.lsp.scripted_model import scripted_model

pytestmark = pytest.mark.asyncio

SPEC = ModelSpec("scripted", "cpu")
TEXT = "def add(a, b):\n    \n"


def task(uri: str = "file:///a.py", typed: str = "", **settings) -> CompletionTask:
    offset = TEXT.index("\n    \n") + 5
    text = TEXT[:offset] + typed + TEXT[offset:]
    offset += len(typed)
    return CompletionTask(uri, Snapshot(text, offset, "python"), Settings(**settings))


class GatedCompleter:
    """Holds each completion until released, and records what it ran."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran: list[str] = []

    def complete(self, engine, task, cancel) -> CompletionOutcome:
        self.ran.append(task.snapshot.text)
        self.started.set()
        self.release.wait(10)
        return CompletionOutcome(cancelled=cancel.is_set(), raw=task.snapshot.text)


def fake_loaded(spec: ModelSpec) -> ServedModel:
    loaded = LoadedModel(engine=None, info=None, path="p", device="cpu", dtype="float32", quantization="none",
                         parameters=1, load_s=0.0)  # fmt: skip
    return ServedModel(loaded, spec, 0.0)


async def started_worker(completer=None, loader=fake_loaded):
    events, stats = [], []
    worker = InferenceWorker(events.append, loader=loader, completer=completer)
    worker.start()
    worker.load(SPEC)
    while not any(e.state in ("ready", "error") for e in events):
        await asyncio.sleep(0.01)
    return worker, events, stats


async def test_a_newer_request_cancels_the_running_and_replaces_the_waiting_one():
    completer = GatedCompleter()
    worker, _, _ = await started_worker(completer)
    loop = asyncio.get_running_loop()
    first, second, third = (loop.create_future() for _ in range(3))
    worker.submit(task(typed="r"), first)
    await asyncio.to_thread(completer.started.wait, 5)
    worker.submit(task(typed="re"), second)  # cancels the running first
    worker.submit(task(typed="ret"), third)  # replaces the waiting second
    assert (await second).cancelled
    completer.release.set()
    assert (await first).cancelled
    assert not (await third).cancelled
    assert len(completer.ran) == 2 and completer.ran[-1].count("ret") == 1  # the second never ran
    worker.stop()


async def test_other_documents_are_not_cancelled():
    completer = GatedCompleter()
    completer.release.set()
    worker, _, _ = await started_worker(completer)
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    worker.submit(task("file:///a.py"), a)
    worker.submit(task("file:///b.py"), b)
    assert not (await a).cancelled and not (await b).cancelled
    worker.stop()


async def test_identical_requests_join_one_job():
    completer = GatedCompleter()
    worker, _, _ = await started_worker(completer)
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    job = worker.submit(task(), a)
    assert worker.submit(task(), b) is job
    completer.release.set()
    assert (await a) is (await b) and len(completer.ran) == 1
    worker.stop()


async def test_withdrawing_the_last_waiter_cancels_the_job():
    completer = GatedCompleter()
    worker, _, _ = await started_worker(completer)
    loop = asyncio.get_running_loop()
    a, b = loop.create_future(), loop.create_future()
    job = worker.submit(task(), a)
    worker.submit(task(), b)
    await asyncio.to_thread(completer.started.wait, 5)
    worker.withdraw(job, a)
    assert not job.cancel.is_set()  # b still waits
    worker.withdraw(job, b)
    assert job.cancel.is_set()
    completer.release.set()
    worker.stop()


async def test_a_failed_load_is_reported_and_requests_get_an_error():
    def broken(spec):
        raise FileNotFoundError(f"{spec.model}: no such checkpoint")

    worker, events, _ = await started_worker(loader=broken)
    assert [e.state for e in events] == ["loading", "error"] and "no such checkpoint" in events[-1].message
    future = asyncio.get_running_loop().create_future()
    worker.submit(task(), future)
    assert (await future).error == "no model is loaded"
    worker.stop()


async def test_a_crashing_completion_costs_one_answer_not_the_worker():
    class Crashing:
        calls = 0

        def complete(self, engine, task, cancel):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return CompletionOutcome(raw="fine")

    worker, _, _ = await started_worker(Crashing())
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    worker.submit(task("file:///a.py"), first)
    assert "boom" in (await first).error
    worker.submit(task("file:///b.py"), second)
    assert (await second).raw == "fine"
    worker.stop()


async def test_cancellation_stops_a_real_generation_within_a_step(tokenizer):
    model = scripted_model(tokenizer, LONG_SCRIPT, loop=True)  # never stops by itself

    def load(spec):
        served = fake_loaded(spec)
        served.loaded.engine = InfillEngine(model, tokenizer, max_seq_len=4096)
        return served

    worker, _, stats = await started_worker(loader=load)
    future = asyncio.get_running_loop().create_future()
    job = worker.submit(task(max_tokens=2000, time_budget_ms=60000), future, on_stats=stats.append)
    while not worker.busy:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    worker.withdraw(job, future)
    while not stats:
        await asyncio.sleep(0.01)
    assert stats[0].stop_reason == "cancelled" and stats[0].generated_tokens < 2000
    worker.stop()


async def test_requests_after_stop_are_answered_not_left_waiting():
    completer = GatedCompleter()
    completer.release.set()
    worker, _, _ = await started_worker(completer)
    worker.stop()
    late = asyncio.get_running_loop().create_future()
    worker.submit(task(), late)
    assert (await asyncio.wait_for(late, 5)).cancelled
    assert completer.ran == []
