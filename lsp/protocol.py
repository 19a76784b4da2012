"""pygls' protocol, hardened: every request gets an answer, whatever the client sends.

pygls 2.1, left alone, raises while decoding a request with malformed params and never
answers it (the client waits forever); serves requests before `initialize`, and a second
`initialize` that switches the position encoding mid-session; drops requests after
`shutdown` without an answer; runs a request sent to a notification method; reads
`"languageId": 1.5` or `"uri": 2` as if they were strings; and keeps the future of every
notification it ever handled (with the traceback, and so the params, of those that
failed: RSS grew by hundreds of MB under a fuzzer). This subclass answers each with the
LSP error, checks JSON types strictly, and forgets finished work.

Documents are kept by the server's own store (lsp/documents.py), so pygls' copy of every
open document, with its str.splitlines line model, is not kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cattrs import transform_error
from cattrs.errors import ClassValidationError
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcMethodNotFound,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol, default_converter, lsp_method

log = logging.getLogger(__name__)
CLIENT_ERRORS = (JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcMethodNotFound, JsonRpcServerNotInitialized)


class _QuietClientErrors(logging.Filter):
    """pygls logs a full traceback for every message that does not decode and every request
    answered with a client error (invalid params, unknown method). This module answers or
    logs each in a line of its own, so the tracebacks are only noise (a fuzzer's flood)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Unable to deserialize message"):
            return False
        if record.exc_info and isinstance(record.exc_info[1], CLIENT_ERRORS):
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


logging.getLogger("pygls.protocol.json_rpc").addFilter(_QuietClientErrors())


@dataclass
class RejectedRequest:
    """A request whose params did not decode: answered with `error`, never dispatched."""

    id: Any
    method: str
    error: JsonRpcException
    jsonrpc: str = "2.0"


@dataclass
class RejectedNotification:
    """A notification that did not decode: logged, never dispatched."""

    method: str
    problem: str
    jsonrpc: str = "2.0"


def describe_error(error: BaseException) -> str:
    """Which fields were wrong, e.g. "invalid value @ $.params.position" (snake_case names, as cattrs has them)."""
    if isinstance(error, ClassValidationError):
        return "; ".join(transform_error(error, path="$"))
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_notification_method(method: str) -> bool:
    """LSP's own notifications (lsprotocol knows them: they have no response type)."""
    entry = types.METHOD_TO_TYPES.get(method)
    return entry is not None and entry[1] is None


# ---- strict JSON types: lsprotocol's converter turns 2 into "2" and 1.5 into version 1 ----


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _: type) -> int:
    # JSON has one number type: 3.0 is an integer, 3.5 and true are not.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"expected a finite number, got {value!r:.50}")
    return float(value)


def strict_converter():
    converter = default_converter()
    for kind, hook in ((str, _strict_str), (int, _strict_int), (bool, _strict_bool), (float, _strict_float)):
        # By exact type: a hook registered for int would also take IntEnums (trigger kinds).
        converter.register_structure_hook_func(lambda t, kind=kind: t is kind, hook)
    return converter


class CodeLlamaProtocol(LanguageServerProtocol):
    initialize_seen = False
    on_client_problem: Callable[[str], None] = staticmethod(lambda problem: None)
    """Told of each malformed message (for the log and at most one message to the user)."""
    on_exit: Callable[[int], None] = staticmethod(lambda code: None)
    """Called on `exit` with the exit code LSP prescribes (0 after `shutdown`, 1 without)."""

    def receive(self, data: dict[str, Any]) -> None:
        """Decode and handle one message object (from lsp.transport); never raises."""
        method = data.get("method")
        if data.get("id") is not None and isinstance(method, str) and is_notification_method(method):
            # Checked on the raw object: decoded, a notification type drops the id.
            self._refuse(data["id"], JsonRpcInvalidRequest(f"{method} is a notification: it must not have an id"))
            return
        try:
            message = self.structure_message(data)
            self.handle_message(message)
        except Exception as e:  # a bug must cost one message, not the connection
            log.exception("could not handle a %s message", data.get("method", "response"))
            self.on_client_problem(f"{data.get('method', 'a response')}: {type(e).__name__}: {e}")

    def structure_message(self, data: dict[str, Any]):
        if "id" in data and "method" in data and "params" not in data:
            # JSON-RPC lets a request omit params (vscode-jsonrpc and Neovim do for
            # codellama/status); pygls' generic request type needs the member.
            data = {**data, "params": None}
        try:
            return super().structure_message(data)
        except JsonRpcException as e:
            method = data.get("method")
            problem = f"{method}: invalid params: {describe_error(e.__cause__ or e)}"
            if "id" in data and isinstance(method, str):
                return RejectedRequest(data["id"], method, JsonRpcInvalidParams(problem))
            return RejectedNotification(str(method), problem)

    def handle_message(self, message: Any) -> None:
        if isinstance(message, RejectedRequest):
            log.warning("rejected request %s: %s", message.id, message.error.message)
            self._send_response(message.id, error=message.error.to_response_error())
            return
        if isinstance(message, RejectedNotification):
            log.warning("ignored notification: %s", message.problem)
            self.on_client_problem(message.problem)
            return
        if not hasattr(message, "jsonrpc"):
            log.warning("ignored a message that is not a JSON-RPC object: %.200r", message)
            return
        method = getattr(message, "method", None)
        request_id = getattr(message, "id", None) if method is not None else None
        if not self.initialize_seen and method not in (types.INITIALIZE, types.EXIT):
            if request_id is not None:
                self._refuse(request_id, JsonRpcServerNotInitialized(f"{method}: the server has not been initialized"))
            return  # notifications before initialize are dropped, as LSP says
        if self._shutdown and method != types.EXIT:
            if request_id is not None:  # LSP: "InvalidRequest" for every request after shutdown
                self._refuse(request_id, JsonRpcInvalidRequest(f"{method}: the server is shutting down"))
            return
        if method == types.CANCEL_REQUEST and not isinstance(getattr(message.params, "id", None), (int, str)):
            self.on_client_problem(f"$/cancelRequest: id must be an integer or a string, got {message.params!r:.80}")
            return
        if method == types.INITIALIZE:
            if self.initialize_seen:
                self._refuse(request_id, JsonRpcInvalidRequest("initialize: the session is already initialized"))
                return
            self.initialize_seen = True
        super().handle_message(message)

    def _refuse(self, request_id: Any, error: JsonRpcException) -> None:
        log.warning("refused request %s: %s", request_id, error.message)
        self._send_response(request_id, error=error.to_response_error())

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        """pygls files the future of every async or generator handler under msg_id and, for
        notifications (a fresh uuid each), never takes it out again: forget it when done."""

        def done(future) -> None:
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            callback(future)

        super()._execute_handler(msg_id, handler, done, args, kwargs)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args):
        """End the session, with 0 after `shutdown` and 1 without, as LSP says. The transport
        decides what that means: the process over stdio, only this connection over TCP."""
        if (handler := self.fm.features.get(types.EXIT)) is not None:
            yield handler, args, None
        log.info("exit after %s", "shutdown" if self._shutdown else "no shutdown request")
        self.on_exit(0 if self._shutdown else 1)

    # The server's DocumentStore replaces pygls' workspace documents: these only pass
    # the notification on to the server's handler.
    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None
