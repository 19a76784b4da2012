"""The model host: one per process, shared by every editor session (connection).

It owns the inference worker and the model's state, and tells each session of state
changes on the event loop. Over stdio there is one session and it drives the model (its
settings choose what to load). Over TCP several sessions share one model, chosen by the
command line: no connection can make another wait for a model of its choosing, or learn
what another's settings are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lsp.loading import ModelSpec
from lsp.status import ModelState
from lsp.worker import InferenceWorker, ModelEvent

log = logging.getLogger(__name__)

WORKER_STOP_S = 30.0
"""How long stop() waits for the inference thread to finish its decode step or prefill chunk."""


class ModelHost:
    def __init__(self, shared: bool, base_spec: ModelSpec | None = None) -> None:
        """shared: several sessions (TCP); the model is `base_spec`, loaded at start()."""
        self.shared = shared
        self.base_spec = base_spec
        self.model = ModelState()
        self.settled = asyncio.Event()
        """Set while no load is in progress."""
        self.worker: InferenceWorker | None = None
        self._listeners: set[Callable[[ModelEvent], None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the inference thread (once, on the event loop)."""
        if self.worker is not None:
            return
        self._loop = loop = asyncio.get_running_loop()

        def post_event(event: ModelEvent) -> None:
            try:
                loop.call_soon_threadsafe(self._on_event, event)
            except RuntimeError:  # the loop is closed: the process is exiting
                pass

        self.worker = InferenceWorker(post_event)
        self.worker.start()
        if self.shared and self.base_spec is not None:
            self.worker.load(self.base_spec)

    def load(self, spec: ModelSpec) -> None:
        """What a session's settings ask to load; only the single session of stdio may choose."""
        if self.worker is not None and not self.shared:
            self.worker.load(spec)

    def subscribe(self, listener: Callable[[ModelEvent], None]) -> None:
        self._listeners.add(listener)

    def unsubscribe(self, listener: Callable[[ModelEvent], None]) -> None:
        self._listeners.discard(listener)

    def _on_event(self, event: ModelEvent) -> None:
        """On the event loop: update the shared state, then tell each session."""
        m = self.model
        m.model, m.quantize, m.state = event.spec.model or "(default model)", event.spec.quantize, event.state
        if event.state == "loading":
            self.settled.clear()
            m.message, m.loaded, m.backend = f"loading {m.model}", None, None
        elif event.state == "ready" and event.loaded is not None:
            loaded = event.loaded
            m.model, m.device, m.quantize = loaded.path, loaded.device, loaded.quantization
            m.load_seconds, m.loaded = round(loaded.load_s, 3), loaded
            b = event.spec.backend
            m.backend = None if b is None else {"url": b.url, "kind": b.kind, "model": loaded.engine.served.name}
            m.message = f"loaded {loaded.describe()}"
            log.info("%s", m.message)
            self.settled.set()
        elif event.state == "error":
            m.message, m.loaded = event.message, None
            self.settled.set()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a session's model event handler failed")

    @property
    def generating(self) -> bool:
        return self.worker is not None and self.worker.busy

    def stop(self, timeout: float = WORKER_STOP_S) -> bool:
        """Cancel everything and wait for the inference thread; False if it did not stop in time."""
        if self.worker is None:
            return True
        self.worker.stop()
        return self.worker.join(timeout)
