"""The one inference thread: loads models and runs completions, newest request first.

Model work never runs on the event loop. Handlers hand a Job to the worker and await
its future; the worker resolves it from its thread through `loop.call_soon_threadsafe`.

Scheduling, per document (a task's `key`: one document of one session): a newer
request replaces an older one still waiting (which is answered as cancelled at once)
and cancels one being generated (the engine checks the job's event between decode
steps). Sessions never cancel or join each other's jobs. A request identical to the waiting or running
one (VS Code asks for inline and classic completions at the same keystroke) joins it
instead. Requests for different documents are served in arrival order. A load is done
before any waiting request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lsp.completer import Completer, CompletionOutcome, CompletionTask
from lsp.loading import ModelSpec, ServedModel, load, resize

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One model call, and the requests (futures on the event loop) waiting for it."""

    task: CompletionTask
    loop: asyncio.AbstractEventLoop
    futures: list[asyncio.Future] = field(default_factory=list)
    on_stats: Callable[[Any], None] = lambda stats: None
    """Called on the event loop with the GenerationStats of the model call, before the outcome."""
    cancel: threading.Event = field(default_factory=threading.Event)
    resolved: bool = False
    """Set before the outcome is delivered: a request arriving after that must not join."""

    def same_request(self, task: CompletionTask) -> bool:
        a, b = self.task.snapshot, task.snapshot
        same_ask = self.task.settings == task.settings and self.task.candidates == task.candidates
        return a.offset == b.offset and same_ask and a.text == b.text

    def resolve(self, outcome: CompletionOutcome) -> None:
        """Hand the outcome to every waiting handler (callable from any thread)."""
        self.resolved = True

        def deliver() -> None:
            if outcome.stats is not None:  # first, so a status request after the answer sees them
                try:
                    self.on_stats(outcome.stats)
                except Exception:
                    log.error("generation stats handler failed: %s", traceback.format_exc())
            for future in self.futures:
                if not future.done():
                    future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: the server is exiting
            pass


@dataclass(frozen=True)
class ModelEvent:
    """A change of the model's state, reported to the event loop."""

    state: str
    """"loading", "ready" or "error"."""
    spec: ModelSpec
    loaded: ServedModel | None = None
    message: str | None = None


class InferenceWorker:
    def __init__(
        self,
        on_model_event: Callable[[ModelEvent], None],
        loader: Callable[[ModelSpec], ServedModel] = load,
        completer: Completer | None = None,
    ) -> None:
        """`on_model_event` is called on the worker thread at each model state change."""
        self.on_model_event = on_model_event
        self.loader = loader
        self.completer = completer or Completer()
        self.loaded: ServedModel | None = None
        self._wanted: ModelSpec | None = None
        self._failed: ModelSpec | None = None
        self._pending: OrderedDict[str, Job] = OrderedDict()
        self._running: Job | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="codellama-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A completion is being generated right now."""
        return self._running is not None

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            jobs = list(self._pending.values())
            self._pending.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        for job in jobs:
            job.resolve(CompletionOutcome(cancelled=True))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after stop); False if it is still running."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def load(self, spec: ModelSpec) -> None:
        """Load (or resize to) this spec before serving more requests; a no-op if it is loaded."""
        with self._cond:
            self._wanted = spec
            self._failed = None
            self._cond.notify_all()

    def submit(
        self, task: CompletionTask, future: asyncio.Future, on_stats: Callable[[Any], None] = lambda stats: None
    ) -> Job:
        """Queue a request; the document's older waiting or running job is cancelled, an identical one joined.

        on_stats gets the GenerationStats of the model call (cancelled ones too), on the event loop."""
        key = task.key
        with self._cond:
            if self._stopping:  # after shutdown nothing would ever run it
                job = Job(task, asyncio.get_running_loop(), [future])
                job.cancel.set()
                job.resolve(CompletionOutcome(cancelled=True))
                return job
            for current in (self._pending.get(key), self._running):
                if current is not None and current.task.key == key and current.same_request(task):
                    if not (current.cancel.is_set() or current.resolved):
                        current.futures.append(future)
                        return current
            older = self._pending.pop(key, None)
            if self._running is not None and self._running.task.key == key:
                self._running.cancel.set()
            job = Job(task, asyncio.get_running_loop(), [future], on_stats)
            self._pending[key] = job
            self._cond.notify_all()
        if older is not None:
            older.cancel.set()
            older.resolve(CompletionOutcome(cancelled=True))
        return job

    def withdraw(self, job: Job, future: asyncio.Future) -> None:
        """A client cancelled one request of the job: stop the job if no other request waits for it."""
        with self._cond:
            if future in job.futures:
                job.futures.remove(future)
            if job.futures:
                return
            job.cancel.set()
            if self._pending.get(job.task.key) is job:
                del self._pending[job.task.key]

    def cancel_owner(self, owner: Any) -> None:
        """Cancel every waiting and running job of one session (its connection ended)."""
        with self._cond:
            jobs = [job for key, job in self._pending.items() if job.task.owner == owner]
            for job in jobs:
                del self._pending[job.task.key]
            if self._running is not None and self._running.task.owner == owner:
                self._running.cancel.set()
        for job in jobs:
            job.cancel.set()
            job.resolve(CompletionOutcome(cancelled=True))

    # ---- the thread ----

    def _needs_load(self) -> bool:
        wanted = self._wanted
        return wanted is not None and wanted != self._failed and (self.loaded is None or self.loaded.spec != wanted)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._needs_load() or self._pending):
                    self._cond.wait()
                if self._stopping:
                    return
                if self._needs_load():
                    spec, job = self._wanted, None
                else:
                    spec, (_, job) = None, self._pending.popitem(last=False)
                    self._running = job
            if spec is not None:
                self._load(spec)
                continue
            try:
                self._complete(job)
            finally:
                with self._cond:
                    self._running = None

    def _load(self, spec: ModelSpec) -> None:
        loaded = self.loaded
        if loaded is not None and loaded.spec.weights_key == spec.weights_key:
            try:
                self.loaded = resize(loaded, spec)
                # Ready again with a cache of the new length (and its decode step compiling anew).
                self._report(ModelEvent("ready", spec, loaded=self.loaded))
                return
            except Exception as e:  # e.g. out of memory for the new cache: report, keep serving nothing
                self.loaded = None
                self._report(ModelEvent("error", spec, message=f"could not allocate the KV cache: {e}"))
                self._failed = spec
                return
        self._report(ModelEvent("loading", spec))
        # Free the old model before reading the new one: two 7B models rarely fit.
        self.loaded = None
        del loaded
        gc.collect()
        try:
            self.loaded = self.loader(spec)
        except Exception as e:
            log.warning("model load failed: %s", traceback.format_exc())
            self._failed = spec
            self._report(ModelEvent("error", spec, message=str(e) or type(e).__name__))
            return
        self._report(ModelEvent("ready", spec, loaded=self.loaded))

    def _complete(self, job: Job) -> None:
        if job.cancel.is_set():
            job.resolve(CompletionOutcome(cancelled=True))
            return
        if self.loaded is None:
            job.resolve(CompletionOutcome(error="no model is loaded"))
            return
        try:
            outcome = self.completer.complete(self.loaded.engine, job.task, job.cancel)
        except Exception as e:  # a bug must cost one answer, not the server
            log.error("completion failed: %s", traceback.format_exc())
            outcome = CompletionOutcome(error=f"{type(e).__name__}: {e}")
        job.resolve(outcome)

    def _report(self, event: ModelEvent) -> None:
        try:
            self.on_model_event(event)
        except Exception:
            log.error("model event handler failed: %s", traceback.format_exc())
