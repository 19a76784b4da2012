"""The language server: one `CodeLlamaServer` per editor session, one small handler per LSP method.

A session is one connection: over stdio the only one, over TCP one per client. Each has
its own documents, settings, answers and counters; they share the model through the
`ModelHost` (lsp/host.py), and no session can see or cancel another's work.

Handlers are coroutines that never do model work: completions go to the inference
worker (lsp/worker.py) and are awaited, so `$/cancelRequest` cancels the awaiting task
and the worker stops the generation within one decode step. The flow of one request
is in `CodeLlamaServer.complete`.

Handlers are written once, below, as module-level functions registered with `handles`;
`new_session` gives each new connection its own server object with all of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from pygls.exceptions import FeatureRequestError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from engine.context import ContextSource
from engine.pipeline import Snapshot
from engine.postprocess import Edit, trim_auto_closed
from lsp.completer import CompletionOutcome, CompletionTask
from lsp.documents import UTF16, Cursor, Document, DocumentStore, DocumentTooLarge, PositionError, code_units
from lsp.host import ModelHost
from lsp.loading import ModelSpec, prompt_budget_problem, usable_lengths
from lsp.protocol import CodeLlamaProtocol, strict_converter
from lsp.recent import CHUNK_LINES, RecentPlaces
from lsp.settings import PromptSettings, Settings, with_overrides
from lsp.status import Status, package_version
from lsp.typed_through import TypedThrough
from lsp.worker import ModelEvent

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "codellama.accept"
STATUS_REQUEST = "codellama/status"
STATUS_NOTIFICATION = "codellama/didChangeStatus"
YANK_NOTIFICATION = "codellama/didYank"
SHOWN_MEMORY = 256
"""Completion ids remembered for codellama.accept."""
COMPILE_POLL_S = 1.0
"""How often load progress looks whether the decode step is compiled yet."""
PARENT_POLL_S = 5.0
"""How often to check that the editor that started the server is still alive."""
CANDIDATES = 3
"""Completions offered when the user asks for them (triggerKind Invoked): greedy, then sampled."""
SHOWN_PROBLEMS = 64
"""Distinct messages remembered per session, so that each is shown to the user once."""
SHOWN_PER_MINUTE = 30
"""Messages shown to the user per session and minute at most; the rest are logged."""
MODEL_SETTINGS = ("model", "device", "quantize", "backend")
"""Settings that choose the model: over TCP they belong to the command line."""

RELEASE_AFTER_CHARS = 2**20
"""Closing a document this large hands freed memory back to the system (see release_free_memory)."""

Handler = Callable[..., Any]
HANDLERS: list[tuple[str, Any, Handler]] = []
COMMANDS: list[tuple[str, Handler]] = []


def handles(method: str, options: Any = None) -> Callable[[Handler], Handler]:
    """Register a module-level function as the handler of an LSP method, for every session."""

    def register(handler: Handler) -> Handler:
        HANDLERS.append((method, options, handler))
        return handler

    return register


def handles_command(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS.append((name, handler))
        return handler

    return register


@dataclass(frozen=True)
class Answer:
    """A completion, in the terms both inline and classic completion items need."""

    id: str
    line: int
    end: int
    """Range end character, in the client's position units (the start is the line's start)."""
    insert_text: str
    """The line's text before the cursor, then the completion."""
    completion: str
    """Just the new text."""


class CodeLlamaServer(LanguageServer):
    """One editor session."""

    def __init__(self, host: ModelHost | None = None, session_id: int = 0) -> None:
        super().__init__(
            "codellama-lsp",
            package_version(),
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=CodeLlamaProtocol,
            converter_factory=strict_converter,
        )
        self.host = host or ModelHost(shared=False)
        self.session_id = session_id
        self.base_settings = Settings()
        """From the command line; the client's settings override them."""
        self.dtype = "auto"
        self.threads: int | None = None
        self.compile = "auto"
        self.watch_editor: int | None = None
        """The editor's process id, where this server can see that process (initialize)."""
        self.settings = Settings()
        self.documents = DocumentStore()
        self.status = Status()
        self.typed_through = TypedThrough()
        self.recent = RecentPlaces()
        self.shown: OrderedDict[str, str] = OrderedDict()
        self.prefetched: dict[str, tuple[CompletionTask, asyncio.Future]] = {}
        """Per document: the completion being made for the text after accepting the one shown."""
        self.encoding = UTF16
        self.root: str | None = None
        self.pending_problems: list[str] = []
        self.background: set[asyncio.Task] = set()
        self._shown_problems: OrderedDict[str, None] = OrderedDict()
        self._shown_times: deque[float] = deque()
        self._client_problems = 0
        self.protocol.on_client_problem = self.client_problem

    @property
    def worker(self):
        return self.host.worker

    @property
    def model_state(self) -> str:
        return self.host.model.state

    def spawn(self, coroutine: Any) -> None:
        """Run a coroutine in the background, holding a reference so it is not collected midway."""
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def close(self) -> None:
        """The connection ended: stop this session's work and let go of its documents."""
        self.host.unsubscribe(self.on_model_event)
        if self.worker is not None:
            self.worker.cancel_owner(self.session_id)
        for task in list(self.background):
            task.cancel()
        self.documents = DocumentStore()
        self.typed_through.clear()
        self.shown.clear()
        self.prefetched.clear()
        self.recent = RecentPlaces()

    # ---- messages to the user ----

    def show(self, kind: types.MessageType, message: str) -> None:
        """window/showMessage, once per distinct message and session, and at most SHOWN_PER_MINUTE a
        minute (repeats and the excess go to the log only: a broken client must not bury the user)."""
        log.warning("%s", message)
        now = time.monotonic()
        while self._shown_times and now - self._shown_times[0] > 60:
            self._shown_times.popleft()
        if message in self._shown_problems or len(self._shown_times) >= SHOWN_PER_MINUTE:
            return
        self._shown_problems[message] = None
        self._shown_times.append(now)
        while len(self._shown_problems) > SHOWN_PROBLEMS:
            self._shown_problems.popitem(last=False)
        self.window_show_message(types.ShowMessageParams(kind, message))

    def client_problem(self, problem: str) -> None:
        """A malformed message from the client: logged; the user hears of it once per session."""
        self._client_problems += 1
        log.warning("client sent a malformed message: %.500s", problem)
        if self._client_problems == 1:
            self.show(
                types.MessageType.Warning,
                f"codellama-lsp ignored a malformed message from the editor ({problem[:200]}); "
                "later ones are only logged",
            )

    def report_server_error(self, error: Exception, source: Any) -> None:
        # pygls' default shows every error in a handler of a notification as a popup.
        if source is FeatureRequestError:  # the request was answered with this error: that is enough
            log.info("request failed: %s", error)
            return
        log.error("error in a notification handler: %s", error)
        self.client_problem(f"{type(error).__name__}: {error}")

    # ---- settings and the model ----

    def apply_settings(self, settings: Settings) -> None:
        """Use new settings: over stdio, (re)load the model if they name another one."""
        if self.host.shared:
            ignored = [k for k in MODEL_SETTINGS if getattr(settings, k) != getattr(self.base_settings, k)]
            if ignored:
                self.show(
                    types.MessageType.Warning,
                    f"codellama-lsp is shared over TCP: its model is set by its command line; "
                    f"the setting(s) {', '.join(ignored)} are ignored",
                )
                for key in ignored:
                    setattr(settings, key, getattr(self.base_settings, key))
        self.settings = settings
        self.typed_through.clear()
        if settings.enable:
            self.host.load(ModelSpec.from_settings(settings, self.dtype, self.threads, self.compile))
        self.check_prompt_budget()
        state = self.model_state if settings.enable else "disabled"
        if state != self.status.state:
            self.status.state = state
            self.publish_status()

    def check_prompt_budget(self) -> None:
        """Say so, once, when the budgets ask for more than the loaded model can use (they are scaled down)."""
        loaded = self.host.model.loaded
        if loaded is None or loaded.engine is None:
            return
        problem = prompt_budget_problem(self.settings, loaded.engine)
        if not problem:
            return
        new_tokens, _ = usable_lengths(self.settings, loaded.engine)
        if self.settings.prompt == PromptSettings() and new_tokens == self.settings.max_tokens:
            log.info("default budgets scaled to the model: %s", problem)  # nothing the user chose
        else:
            self.show(types.MessageType.Warning, f"codellama-lsp settings: {problem}")

    def status_json(self) -> dict[str, Any]:
        return self.status.to_json(self.host.generating, self.host.model, len(self.recent.chunks))

    def publish_status(self) -> None:
        self.protocol.notify(STATUS_NOTIFICATION, self.status_json())

    def on_model_event(self, event: ModelEvent) -> None:
        """Runs on the event loop, after the host updated the shared model state."""
        m = self.host.model
        if event.state == "loading":
            self.spawn(self.report_load_progress(m.model))
        elif event.state == "ready":
            self.window_log_message(types.LogMessageParams(types.MessageType.Info, m.message or ""))
            self.check_prompt_budget()
            if m.loaded is not None and m.loaded.compiling:
                self.spawn(self.publish_when_compiled(m.loaded))
        elif event.state == "error":
            self.show(types.MessageType.Error, f"codellama-lsp could not load the model: {event.message}")
        self.status.state = event.state if self.settings.enable else "disabled"
        self.publish_status()

    async def decode_step_settled(self, loaded: Any) -> None:
        """Return once the decode step compiling in the background is done (or the model replaced)."""
        while loaded.compiling and self.host.model.loaded is loaded:
            await asyncio.sleep(COMPILE_POLL_S)

    async def publish_when_compiled(self, loaded: Any) -> None:
        await self.decode_step_settled(loaded)
        if self.host.model.loaded is loaded:
            self.window_log_message(types.LogMessageParams(types.MessageType.Info, loaded.decode_step or ""))
            self.publish_status()

    async def report_load_progress(self, model: str) -> None:
        """`$/progress` while the model loads (when the client shows work-done progress)."""
        window = self.client_capabilities.window
        if not (window and window.work_done_progress):
            return
        token = f"codellama-load-{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), timeout=10)
        except Exception as e:  # the client refused or never answered: no progress bar then
            log.info("no progress token: %s", e)
            return
        self.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title="Code Llama", message=f"loading {model}")
        )
        await self.host.settled.wait()
        loaded = self.host.model.loaded
        if self.model_state == "ready" and loaded is not None and loaded.compiling:
            self.work_done_progress.report(
                token, types.WorkDoneProgressReport(message="compiling the decode step (completions meanwhile)")
            )
            await self.decode_step_settled(loaded)
        done = "ready" if self.model_state == "ready" else "failed: see the error message"
        self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=f"model {done}"))

    def start_worker(self) -> None:
        """Follow the model's state; a session that joins a running host hears where it stands."""
        joining = self.host.worker is not None
        self.host.subscribe(self.on_model_event)
        self.host.start()
        if joining:
            m = self.host.model
            self.on_model_event(ModelEvent(m.state, ModelSpec(m.model), m.loaded, m.message))

    # ---- completions ----

    def relative_path(self, uri: str) -> str:
        path = to_fs_path(uri) or uri
        if self.root and path.startswith(self.root.rstrip(os.sep) + os.sep):
            path = os.path.relpath(path, self.root)
        return path

    def context_sources(self, uri: str) -> tuple[ContextSource, ...]:
        """Recent places first (edits, yanks, places left), then other open documents."""
        p = self.settings.prompt
        sources = list(self.recent.sources(p.recent_chunks))
        for doc in self.documents.recently_used(uri, p.context_files):
            sources.append(ContextSource(self.relative_path(doc.uri), doc.text, (doc.uri, doc.version, len(doc.text))))
        return tuple(sources)

    def note_cursor(self, doc: Document, line: int) -> None:
        """Where the user asks for a completion; a jump keeps the place left as a recent one."""
        left = self.recent.moved(doc.uri, line)
        if left is not None and (old := self.documents.get(left[0])) is not None:
            self.recent.visited(old.uri, self.relative_path(old.uri), left[1], old.lines_around(left[1], CHUNK_LINES))

    async def complete(
        self,
        uri: str,
        position: types.Position,
        selected: types.SelectedCompletionInfo | None = None,
        candidates: int = 1,
    ) -> list[Answer]:
        """The completions at a position, best first; none without a model, when disabled, at a bad
        position, or when nothing useful is left. Typed-through when the user is typing into the
        last one, else a model call (or the one already made for the text after an accept)."""
        started = time.perf_counter()
        self.status.requests += 1
        found = self.cursor_for(uri, position)
        if found is None:
            return []
        doc, cursor = found
        self.documents.touch(uri)
        self.note_cursor(doc, cursor.line)
        if selected is None and candidates == 1 and (answer := self.typed_through_answer(doc, cursor)) is not None:
            return [answer]
        return await self.model_answers(doc, cursor, selected, started, candidates)

    def cursor_for(self, uri: str, position: types.Position) -> tuple[Document, Cursor] | None:
        """The document and cursor a request names, when there is a model to ask."""
        doc = self.documents.get(uri)
        if doc is None:
            log.info("completion for a document that is not open: %s", uri)
            return None
        if not self.settings.enable or self.model_state != "ready" or self.worker is None:
            return None
        try:
            return doc, doc.cursor_at(position, self.encoding)
        except PositionError as e:
            log.info("%s", e)
            return None

    def typed_through_answer(self, doc: Document, cursor: Cursor) -> Answer | None:
        """The rest of the completion on screen, when the user typed the start of it."""
        rest = self.typed_through.remainder(doc.uri, doc.text, cursor.offset)
        if rest is None:
            return None
        self.status.typed_through += 1
        rest, replace = trim_auto_closed(rest, cursor.line_after)
        return self.answer(doc.uri, doc.text, cursor, cursor.line_before, rest, cursor.offset + replace)

    async def model_answers(
        self,
        doc: Document,
        cursor: Cursor,
        selected: types.SelectedCompletionInfo | None,
        started: float,
        candidates: int,
    ) -> list[Answer]:
        """Ask the model (through the worker) and turn its edits into answers."""
        text, offset, resume = self.as_if_accepted(doc, cursor, selected)
        snapshot = Snapshot(text, offset, doc.language_id, self.context_sources(doc.uri), known_line=cursor.line)
        task = CompletionTask(doc.uri, snapshot, self.settings, self.session_id, started, candidates)
        # The answer's range is in the document as the request saw it: edits that arrive while
        # the model works must not shift it.
        requested_text = doc.text
        outcome = await self.prefetched_outcome(task) or await self.run(task)
        if outcome is None:
            return []
        self.status.latencies_ms.append((time.perf_counter() - started) * 1000)
        if outcome.edit is None:
            return []
        edits = [outcome.edit, *outcome.alternatives]
        current = text is doc.text and task.settings is self.settings  # not made with settings changed since
        if current:
            self.typed_through.remember(doc.uri, text, offset, edits[0].text)
            if self.settings.prefetch:
                self.prefetch_after(task, edits[0])
        head = text[cursor.line_start : offset]
        return [self.answer(doc.uri, requested_text, cursor, head, e.text, resume + e.replace) for e in edits]

    def prefetch_after(self, task: CompletionTask, edit: Edit) -> None:
        """Start on the completion that follows accepting `edit`, while the user reads it: an accept
        then finds it done (or running, and joins it). Typing anything else cancels it (same key)."""
        snap = task.snapshot
        text = snap.text[: snap.offset] + edit.text + snap.text[snap.offset + edit.replace :]
        line = snap.line + edit.text.count("\n")
        after = Snapshot(text, snap.offset + len(edit.text), snap.language_id, snap.sources, known_line=line)
        ahead = CompletionTask(task.uri, after, task.settings, task.owner)
        future = asyncio.get_running_loop().create_future()
        assert self.worker is not None
        self.worker.submit(ahead, future, on_stats=self.status.record_generation)
        self.prefetched[task.uri] = (ahead, future)

    async def prefetched_outcome(self, task: CompletionTask) -> CompletionOutcome | None:
        """The prefetched outcome when this request is for exactly the document it was made for."""
        entry = self.prefetched.pop(task.uri, None)
        if entry is None:
            return None
        ahead, future = entry
        a, b = ahead.snapshot, task.snapshot
        if task.candidates != 1 or a.offset != b.offset or ahead.settings != task.settings or a.text != b.text:
            return None  # submitting this task cancels it (the same document of the same session)
        outcome: CompletionOutcome = await asyncio.shield(future)
        if outcome.cancelled or outcome.error is not None:
            return None
        self.status.served += 1
        self.status.prefetched += 1
        return outcome

    def as_if_accepted(
        self, doc: Document, cursor: Cursor, selected: types.SelectedCompletionInfo | None
    ) -> tuple[str, int, int]:
        """(text, cursor, resume): the document as if the item selected in the editor's completion
        menu were accepted, the cursor after it, and the offset where the real document's text
        after the cursor resumes. The ghost text must extend the selected item (LSP 3.18)."""
        unchanged = (doc.text, cursor.offset, cursor.offset)
        if selected is None or not selected.range.start.line == selected.range.end.line == cursor.line:
            return unchanged
        start, _ = doc.offset_at(selected.range.start, self.encoding)
        end, _ = doc.offset_at(selected.range.end, self.encoding)
        if not start <= cursor.offset <= end:  # an item that does not replace the text at the cursor
            return unchanged
        return doc.text[:start] + selected.text + doc.text[end:], start + len(selected.text), end

    async def run(self, task: CompletionTask) -> CompletionOutcome | None:
        """Hand the task to the worker and wait; None when it was cancelled or failed."""
        assert self.worker is not None
        future = asyncio.get_running_loop().create_future()
        job = self.worker.submit(task, future, on_stats=self.status.record_generation)
        try:
            outcome: CompletionOutcome = await future
        except asyncio.CancelledError:  # $/cancelRequest, or shutdown
            self.worker.withdraw(job, future)
            self.status.cancelled += 1
            raise
        if outcome.cancelled:
            self.status.cancelled += 1
            return None
        if outcome.error is not None:
            self.status.failed += 1
            self.status.last_error = outcome.error
            log.warning("completion failed: %s", outcome.error)
            return None
        self.status.served += 1
        self.status.last_error = None
        return outcome

    def answer(self, uri: str, doc_text: str, cursor: Cursor, head: str, completion: str, end: int) -> Answer:
        """Replace the cursor's line from its start to document offset `end` with head + completion."""
        answer_id = uuid.uuid4().hex
        self.shown[answer_id] = uri
        while len(self.shown) > SHOWN_MEMORY:
            self.shown.popitem(last=False)
        end_units = code_units(doc_text[cursor.line_start : end], self.encoding)
        return Answer(answer_id, cursor.line, end_units, head + completion, completion)


def new_session(host: ModelHost, session_id: int = 0) -> CodeLlamaServer:
    """A server object for one connection, with every handler of this module."""
    ls = CodeLlamaServer(host, session_id)
    for method, options, handler in HANDLERS:
        ls.feature(method, options)(handler)
    for name, handler in COMMANDS:
        ls.command(name)(handler)
    return ls


# ---- lifecycle ----


@handles(types.INITIALIZE)
def initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
    encoding = ls.workspace.position_encoding or UTF16
    ls.encoding = getattr(encoding, "value", encoding)
    ls.root = to_fs_path(params.root_uri) if params.root_uri else params.root_path
    options = params.initialization_options
    if isinstance(options, dict) and set(options) == {"codellama"}:
        options = options["codellama"]
    settings, problems = with_overrides(ls.base_settings, options)
    ls.settings, ls.pending_problems = settings, problems
    # Whether the editor's process is one this server can see (not on another machine or in
    # another PID namespace): looked at here, while the editor waits for the answer. By the
    # time `initialized` is handled (asynchronously, possibly after later messages) it may have
    # died already, and that must end the session rather than pass for "not visible".
    pid = params.process_id
    ls.watch_editor = pid if pid and os.name == "posix" and process_alive(pid) else None
    text_capabilities = params.capabilities.text_document
    has_inline = text_capabilities is not None and text_capabilities.inline_completion is not None
    if has_inline and not settings.classic_completion:
        # Offered both, VS Code cancels a slow inline request, opens its suggest widget with the
        # classic item (a second model call) and Tab inserts the widget's item, not the ghost text.
        ls.protocol.fm.features.pop(types.TEXT_DOCUMENT_COMPLETION, None)


@handles(types.INITIALIZED)
async def initialized(ls: CodeLlamaServer, params: types.InitializedParams) -> None:
    if ls.pending_problems:
        ls.show(types.MessageType.Warning, "codellama-lsp settings: " + "; ".join(ls.pending_problems))
    ls.start_worker()
    ls.apply_settings(ls.settings)
    # POSIX only (os.kill(pid, 0) terminates the process on Windows); see initialize.
    if ls.watch_editor is not None:
        ls.spawn(exit_when_parent_dies(ls, ls.watch_editor))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # alive but someone else's (or a platform without signal 0)
        return True
    return True


async def exit_when_parent_dies(ls: CodeLlamaServer, pid: int) -> None:
    """An editor that crashed leaves no one to send `exit`: don't hold gigabytes of model forever."""
    while process_alive(pid):
        await asyncio.sleep(PARENT_POLL_S)
    log.warning("the editor (process %s) is gone: ending its session", pid)
    ls.protocol.on_exit(1)


@handles(types.SHUTDOWN)
def shutdown(ls: CodeLlamaServer, params: None) -> None:
    if ls.worker is None:
        return
    if ls.host.shared:  # other connections keep the model: stop only this one's work
        ls.worker.cancel_owner(ls.session_id)
    else:
        ls.worker.stop()


# ---- documents ----


@handles(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CodeLlamaServer, params: types.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    if not isinstance(d.language_id, str):  # lsprotocol lets any JSON value through here
        ls.client_problem(f"textDocument/didOpen {d.uri}: languageId must be a string, got {d.language_id!r:.50}")
        return
    try:
        ls.documents.open(d.uri, d.text, d.version, d.language_id)
    except DocumentTooLarge as e:
        ls.show(types.MessageType.Warning, f"codellama-lsp: {e}")


@handles(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CodeLlamaServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = ls.documents.get(params.text_document.uri)
    if doc is None:
        log.info("didChange for a document that is not open: %s", params.text_document.uri)
        return
    try:
        for change in params.content_changes:
            ls.documents.apply(doc, change, ls.encoding)
            if isinstance(change, types.TextDocumentContentChangePartial):
                line = min(change.range.start.line, doc.line_count - 1)
                ls.recent.edited(doc.uri, ls.relative_path(doc.uri), line, doc.lines_around(line, CHUNK_LINES))
    except DocumentTooLarge as e:
        ls.show(types.MessageType.Warning, f"codellama-lsp: {e}")
        return
    doc.version = params.text_document.version
    ls.documents.touch(doc.uri)


@handles(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CodeLlamaServer, params: types.DidCloseTextDocumentParams) -> None:
    doc = ls.documents.get(params.text_document.uri)
    ls.documents.close(params.text_document.uri)
    ls.typed_through.forget(params.text_document.uri)
    ls.prefetched.pop(params.text_document.uri, None)
    ls.recent.forget(params.text_document.uri)
    if doc is not None and len(doc.text) >= RELEASE_AFTER_CHARS:
        del doc
        release_free_memory()


# ---- completions ----


@handles(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def text_document_inline_completion(
    ls: CodeLlamaServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    selected = params.context.selected_completion_info if params.context else None
    # Asked for explicitly (VS Code: the user cycles with Alt+]): several candidates.
    invoked = params.context is not None and params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    answers = await ls.complete(params.text_document.uri, params.position, selected, CANDIDATES if invoked else 1)
    if not answers:
        ls.status.empty += 1
    items = [
        types.InlineCompletionItem(
            insert_text=answer.insert_text,
            range=line_range(answer),
            command=types.Command(title="Accept completion", command=ACCEPT_COMMAND, arguments=[{"id": answer.id}]),
        )
        for answer in answers
    ]
    return types.InlineCompletionList(items=items)


@handles(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def text_document_completion(ls: CodeLlamaServer, params: types.CompletionParams) -> types.CompletionList:
    answers = await ls.complete(params.text_document.uri, params.position)
    if not answers:
        ls.status.empty += 1
        return types.CompletionList(is_incomplete=True, items=[])
    answer = answers[0]
    first_line = answer.insert_text.split("\n", 1)[0].strip()
    item = types.CompletionItem(
        label=first_line if len(first_line) <= 60 else first_line[:57] + "...",
        kind=types.CompletionItemKind.Text,
        detail="Code Llama",
        documentation=answer.completion,
        filter_text=answer.insert_text,
        text_edit=types.TextEdit(range=line_range(answer), new_text=answer.insert_text),
        insert_text_format=types.InsertTextFormat.PlainText,
        sort_text="0",
        preselect=True,
        command=types.Command(title="Accept completion", command=ACCEPT_COMMAND, arguments=[{"id": answer.id}]),
    )
    # Incomplete: every keystroke changes the completion, so the client must ask again.
    return types.CompletionList(is_incomplete=True, items=[item])


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).

    A closed 20 MB document is freed, but glibc keeps the pages for reuse: RSS stayed 50 MB
    above where it started after opening and closing a few (measured). Python offers no call
    for this, so it goes through ctypes."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def line_range(answer: Answer) -> types.Range:
    return types.Range(types.Position(answer.line, 0), types.Position(answer.line, answer.end))


# ---- commands, settings, status ----


@handles_command(ACCEPT_COMMAND)
def codellama_accept(ls: CodeLlamaServer, *args: Any) -> None:
    if len(args) != 1 or not isinstance(args[0], dict) or not isinstance(args[0].get("id"), str):
        raise JsonRpcInvalidParams(f'{ACCEPT_COMMAND}: expected arguments [{{"id": string}}], got {list(args)!r}')
    uri = ls.shown.pop(args[0]["id"], None)
    if uri is None:
        log.info("%s: unknown completion id %s", ACCEPT_COMMAND, args[0]["id"])
        return
    ls.status.accepted += 1
    ls.typed_through.forget(uri)


@handles(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def workspace_did_change_configuration(ls: CodeLlamaServer, params: types.DidChangeConfigurationParams) -> None:
    # Not a coroutine when the settings came with it: applied before the next message is read,
    # so a request right after the notification sees them.
    sent = params.settings
    if isinstance(sent, dict) and "codellama" in sent:
        use_settings(ls, sent["codellama"], "settings.codellama")
    elif sent is None or isinstance(sent, dict):  # the pull model: ask for the section
        ls.spawn(pull_and_use_settings(ls))
    else:
        use_settings(ls, sent, "settings")


async def pull_and_use_settings(ls: CodeLlamaServer) -> None:
    values = await pull_configuration(ls)
    if values is None:
        ls.show(
            types.MessageType.Warning,
            "codellama-lsp: the editor changed its configuration but sent no codellama settings, "
            "and could not be asked for them (workspace/configuration): settings unchanged",
        )
        return
    use_settings(ls, values, "the codellama section")


def use_settings(ls: CodeLlamaServer, values: Any, where: str) -> None:
    if values is not None and not isinstance(values, dict):
        ls.show(
            types.MessageType.Warning,
            f"codellama-lsp: {where} must be an object, got {type(values).__name__}: settings unchanged",
        )
        return
    settings, problems = with_overrides(ls.base_settings, values)
    if problems:
        ls.show(types.MessageType.Warning, "codellama-lsp settings: " + "; ".join(problems))
    ls.apply_settings(settings)


async def pull_configuration(ls: CodeLlamaServer) -> Any:
    """The `codellama` section, asked of a client that sent didChangeConfiguration without it."""
    workspace = ls.client_capabilities.workspace
    if not (workspace and workspace.configuration):
        return None
    try:
        items = [types.ConfigurationItem(section="codellama")]
        result = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(items)), 10)
        return result[0] if result else None
    except Exception as e:
        log.info("workspace/configuration failed: %s", e)
        return None


@handles(YANK_NOTIFICATION)
def codellama_did_yank(ls: CodeLlamaServer, params: Any) -> None:
    """{"uri": string, "text": string}: text the user copied (Neovim's TextYankPost)."""
    text, uri = getattr(params, "text", None), getattr(params, "uri", None)
    if not isinstance(text, str) or not isinstance(uri, str):
        ls.client_problem(f"{YANK_NOTIFICATION}: expected {{uri: string, text: string}}, got {params!r:.100}")
        return
    ls.recent.yanked(uri, ls.relative_path(uri), text[: CHUNK_LINES * 400])


@handles(STATUS_REQUEST)
def codellama_status(ls: CodeLlamaServer, params: Any) -> dict[str, Any]:
    return ls.status_json()
