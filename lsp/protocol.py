"""pygls' protocol, hardened: every request gets an answer, whatever the client sends.

pygls 2.1 raises while decoding a request with malformed params and then never answers
it (the client waits forever); it also serves requests before `initialize`. This
subclass answers the first with InvalidParams and the second with ServerNotInitialized,
as LSP requires. Documents are kept by the server's own store (lsp/documents.py), so
pygls' copy of every open document, with its str.splitlines line model, is not kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from cattrs import transform_error
from cattrs.errors import ClassValidationError
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcServerNotInitialized
from pygls.protocol import LanguageServerProtocol, lsp_method

log = logging.getLogger(__name__)


@dataclass
class RejectedRequest:
    """A request whose params did not decode: answered with `error`, never dispatched."""

    id: Any
    method: str
    error: JsonRpcException
    jsonrpc: str = "2.0"


def describe_error(error: BaseException) -> str:
    """Which fields were wrong, e.g. "invalid value @ $.params.position" (snake_case names, as cattrs has them)."""
    if isinstance(error, ClassValidationError):
        return "; ".join(transform_error(error, path="$"))
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class CodeLlamaProtocol(LanguageServerProtocol):
    initialize_seen = False

    def structure_message(self, data: dict[str, Any]):
        if "id" in data and "method" in data and "params" not in data:
            # JSON-RPC lets a request omit params (vscode-jsonrpc and Neovim do for
            # codellama/status); pygls' generic request type needs the member.
            data = {**data, "params": None}
        try:
            return super().structure_message(data)
        except JsonRpcException as e:
            if "id" in data and isinstance(data.get("method"), str):
                message = f"{data['method']}: invalid params: {describe_error(e.__cause__ or e)}"
                return RejectedRequest(data["id"], data["method"], JsonRpcInvalidParams(message))
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, RejectedRequest):
            log.warning("rejected request %s: %s", message.id, message.error.message)
            self._send_response(message.id, error=message.error.to_response_error())
            return
        if not hasattr(message, "jsonrpc"):
            log.warning("ignored a message that is not a JSON-RPC object: %.200r", message)
            return
        method = getattr(message, "method", None)
        if not self.initialize_seen and method not in (types.INITIALIZE, types.EXIT):
            if hasattr(message, "id") and method is not None:
                error = JsonRpcServerNotInitialized(f"{method}: the server has not been initialized")
                self._send_response(message.id, error=error.to_response_error())
            return  # notifications before initialize are dropped, as LSP says
        if method == types.INITIALIZE:
            self.initialize_seen = True
        super().handle_message(message)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args):
        """Exit now, with 0 after `shutdown` and 1 without, as LSP says.

        pygls raises SystemExit from inside the connection handler (over TCP asyncio logs
        it as an unhandled error), and interpreter shutdown would wait for the thread
        blocked reading stdin; `os._exit` ends the inference thread mid-step as well.
        """
        if (handler := self.fm.features.get(types.EXIT)) is not None:
            yield handler, args, None
        log.info("exit after %s", "shutdown" if self._shutdown else "no shutdown request")
        logging.shutdown()
        os._exit(0 if self._shutdown else 1)

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
