"""The server end to end, through the real subprocess, as Neovim and as VS Code.

The shared `client` fixture's server runs the scripted test model, which writes
SCRIPT ("return a + b") after any prompt: so the expected completions are known.
"""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled

from lsp.documents import code_units
from tests.lsp.helpers import (
    SCRIPT,
    configure,
    encoding,
    idle,
    inline,
    inline_params,
    insert,
    open_document,
    position,
    replace,
    status,
    wait_for_state,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

FUNCTION = "def add(a, b):\n    \n"
BODY = types.Position(1, 4)  # the cursor in FUNCTION's empty body


def delta(before: dict, after: dict, *keys: str) -> dict[str, int]:
    return {k: after[k] - before[k] for k in keys}


async def test_capabilities_are_advertised(client):
    caps = client.initialize_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert "codellama.accept" in caps.execute_command_provider.commands
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.position_encoding == encoding(client)
    assert client.initialize_result.server_info.name == "codellama-lsp"


async def test_model_load_is_reported(client):
    # The fixture waited for "ready": the load was shown as work-done progress and announced.
    reports = [r for token, r in client.progress_reports.items() if token.startswith("codellama-load")]
    assert reports and isinstance(reports[0][0], types.WorkDoneProgressBegin)
    assert isinstance(reports[0][-1], types.WorkDoneProgressEnd) and "ready" in reports[0][-1].message
    assert [s["state"] for s in client.statuses][-1] == "ready"
    current = await status(client)
    assert current["device"] == "cpu" and current["loadSeconds"] > 0 and current["version"]


async def test_inline_item_replaces_the_line_up_to_the_cursor(client, uri):
    open_document(client, uri, FUNCTION)
    [item] = await inline(client, uri, BODY)
    assert item.insert_text == "    " + SCRIPT
    assert item.range == types.Range(types.Position(1, 0), BODY)
    assert item.command.command == "codellama.accept"


@pytest.mark.parametrize("line_before", ['    s = "😀漢字" ', "    naïve = '🐍🐍' "])
async def test_range_counts_client_units_after_non_ascii(client, uri, line_before):
    text = f"def add(a, b):\n{line_before}\n"
    open_document(client, uri, text)
    cursor = position(client, text, text.index("\n", 15))
    assert cursor.character == code_units(line_before, encoding(client)) != len(line_before)
    [item] = await inline(client, uri, cursor)
    assert item.range == types.Range(types.Position(1, 0), cursor)
    assert item.insert_text.startswith(line_before) and len(item.insert_text) > len(line_before)


async def test_selected_completion_item_is_completed_as_if_accepted(client, uri):
    # The editor's menu shows "return" for the typed "re": the ghost text must extend it.
    open_document(client, uri, "def add(a, b):\n    re\n")
    selected = types.SelectedCompletionInfo(types.Range(types.Position(1, 4), types.Position(1, 6)), "return")
    result = await client.text_document_inline_completion_async(inline_params(uri, types.Position(1, 6), selected))
    [item] = result.items
    assert item.insert_text == "    " + SCRIPT
    assert item.range == types.Range(types.Position(1, 0), types.Position(1, 6))


async def test_classic_completion_gives_the_same_text(client, uri):
    open_document(client, uri, FUNCTION)
    result = await client.text_document_completion_async(
        types.CompletionParams(types.TextDocumentIdentifier(uri), BODY)
    )
    [item] = result.items
    assert result.is_incomplete
    assert item.text_edit.new_text == "    " + SCRIPT
    assert item.text_edit.range == types.Range(types.Position(1, 0), BODY)
    assert item.label == SCRIPT


async def test_accept_command_counts_known_completions(client, uri):
    open_document(client, uri, FUNCTION)
    [item] = await inline(client, uri, BODY)
    before = await status(client)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(item.command.command, list(item.command.arguments))
    )
    await client.workspace_execute_command_async(types.ExecuteCommandParams("codellama.accept", [{"id": "nope"}]))
    with pytest.raises(JsonRpcInvalidParams):
        await client.workspace_execute_command_async(types.ExecuteCommandParams("codellama.accept", ["bad"]))
    assert delta(before, await status(client), "accepted") == {"accepted": 1}


async def test_typed_through_is_served_without_the_model(client, uri):
    open_document(client, uri, FUNCTION)
    [shown] = await inline(client, uri, BODY)
    before = await idle(client)  # the prefetch for accepting it has run: not this request's work
    insert(client, uri, BODY, "ret")
    [item] = await inline(client, uri, types.Position(1, 7))
    assert item.insert_text == shown.insert_text
    assert item.range.end == types.Position(1, 7)
    after = await status(client)
    assert delta(before, after, "typedThrough", "served", "tokensGenerated", "tokensPrefilled") == {
        "typedThrough": 1,
        "served": 0,
        "tokensGenerated": 0,
        "tokensPrefilled": 0,
    }


async def test_an_edit_elsewhere_invalidates_typed_through(client, uri):
    open_document(client, uri, FUNCTION)
    await inline(client, uri, BODY)
    insert(client, uri, BODY, "ret")
    insert(client, uri, types.Position(0, 0), "# a comment\n")
    before = await status(client)
    [item] = await inline(client, uri, types.Position(2, 7))
    assert item.insert_text == "    " + SCRIPT  # the model again, healing "ret" into "return"
    assert delta(before, await status(client), "typedThrough", "served") == {"typedThrough": 0, "served": 1}


async def test_backspace_past_the_start_asks_the_model(client, uri):
    open_document(client, uri, FUNCTION)
    await inline(client, uri, BODY)
    change = types.TextDocumentContentChangePartial(range=types.Range(types.Position(1, 2), BODY), text="")
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(types.VersionedTextDocumentIdentifier(version=2, uri=uri), [change])
    )
    before = await status(client)
    await inline(client, uri, types.Position(1, 2))
    assert delta(before, await status(client), "typedThrough", "served") == {"typedThrough": 0, "served": 1}


async def test_identical_requests_share_one_generation(client, uri, looping_checkpoint, scripted_checkpoint):
    # VS Code asks for inline and classic completions at the same keystroke. The looping
    # model generates all maxTokens, long enough for the second request to find the first running.
    await use_model(client, looping_checkpoint, maxTokens=128, timeBudgetMs=60000)
    try:
        open_document(client, uri, FUNCTION)
        before = await status(client)
        first = client.text_document_inline_completion(inline_params(uri, BODY))
        second = client.text_document_completion(types.CompletionParams(types.TextDocumentIdentifier(uri), BODY))
        inline_result, classic_result = await asyncio.gather(asyncio.wrap_future(first), asyncio.wrap_future(second))
        assert inline_result.items[0].insert_text == classic_result.items[0].text_edit.new_text
        after = await status(client)
        assert delta(before, after, "served", "cancelled", "generations") == {
            "served": 2,
            "cancelled": 0,
            "generations": 1,
        }
    finally:
        await use_model(client, scripted_checkpoint)


async def use_model(client, checkpoint, **settings) -> None:
    await configure(client, {"model": str(checkpoint), **settings})
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        current = await status(client)
        if current["model"] == str(checkpoint) and current["state"] == "ready":
            return
        assert asyncio.get_running_loop().time() < deadline, current
        await asyncio.sleep(0.05)


async def test_a_burst_of_requests_generates_only_the_last(client, uri, looping_checkpoint, scripted_checkpoint):
    # The looping model only stops at maxTokens: each request takes long enough to be superseded.
    await use_model(client, looping_checkpoint, maxTokens=256, timeBudgetMs=60000)
    try:
        open_document(client, uri, FUNCTION)
        before = await status(client)
        futures = []
        for i in range(20):  # a keystroke, then a request, as an editor sends them while typing
            insert(client, uri, types.Position(1, 4 + i), "x")
            params = inline_params(uri, types.Position(1, 5 + i))
            futures.append(asyncio.wrap_future(client.text_document_inline_completion(params)))
        results = await asyncio.gather(*futures)
        assert [len(r.items) for r in results] == [0] * 19 + [1]
        assert results[-1].items[0].insert_text.startswith("    " + "x" * 20)
        after = await status(client)
        assert delta(before, after, "requests", "cancelled", "served") == {"requests": 20, "cancelled": 19, "served": 1}
    finally:
        await use_model(client, scripted_checkpoint)


async def test_cancel_request_stops_the_generation(client, uri, looping_checkpoint, scripted_checkpoint):
    await use_model(client, looping_checkpoint, maxTokens=2048, timeBudgetMs=120000)
    try:
        open_document(client, uri, FUNCTION)
        before = await status(client)
        request = client.protocol.send_request(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, BODY), msg_id="to-cancel"
        )
        while not (await status(client))["generating"]:
            await asyncio.sleep(0.01)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="to-cancel"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wrap_future(request)
        while (await status(client))["generating"]:
            await asyncio.sleep(0.01)
        after = await status(client)
        assert delta(before, after, "cancelled", "served") == {"cancelled": 1, "served": 0}
        # The looping model would write all 2,048 tokens; the cancel stopped it. (Under load the
        # cancel can land during the prefill, before the first token, so 0 is possible.)
        assert after["tokensGenerated"] - before["tokensGenerated"] < 2048
    finally:
        await use_model(client, scripted_checkpoint)
    [item] = await inline(client, uri, BODY)  # and the server goes on serving
    assert item.insert_text == "    " + SCRIPT


async def test_settings_changes_take_effect(client, uri):
    open_document(client, uri, FUNCTION)
    try:
        await configure(client, {"enable": False})
        assert (await status(client))["state"] == "disabled"
        assert await inline(client, uri, BODY) == []
        await configure(client, {"maxTokens": 6})
        assert (await status(client))["state"] == "ready"
        [short] = await inline(client, uri, BODY)
        assert ("    " + SCRIPT).startswith(short.insert_text) and len(short.insert_text) < len("    " + SCRIPT)
        messages = len(client.messages)
        await configure(client, {"maxTokens": "many", "multiline": "sometimes", "colour": "blue"})
        problems = " ".join(m.message for m in client.messages[messages:])
        assert "codellama.maxTokens" in problems and "codellama.multiline" in problems and "colour" in problems
        [item] = await inline(client, uri, types.Position(1, 4))  # defaults again: the whole script
        assert item.insert_text == "    " + SCRIPT
    finally:
        await configure(client, {})
    await wait_for_state(client, "ready")


async def test_settings_are_pulled_when_the_notification_has_none(client, uri):
    # Some clients send didChangeConfiguration with null settings: the server asks for them.
    open_document(client, uri, FUNCTION)
    client.set_configuration({"maxTokens": 6}, section="codellama")
    try:
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        for _ in range(100):  # the server's workspace/configuration round trip happens meanwhile
            [item] = await inline(client, uri, BODY)
            if item.insert_text != "    " + SCRIPT:
                break
            await asyncio.sleep(0.05)
        assert ("    " + SCRIPT).startswith(item.insert_text) and item.insert_text != "    " + SCRIPT
    finally:
        client.set_configuration({}, section="codellama")
        await configure(client, {})


async def test_other_open_documents_do_not_break_completion(client, uri):
    helper_uri = uri.replace(".py", "_helper.py")
    open_document(client, helper_uri, "def multiply(a, b):\n    return a * b\n" * 50)
    open_document(client, uri, FUNCTION)
    [item] = await inline(client, uri, BODY)
    assert item.insert_text == "    " + SCRIPT


async def test_asked_for_explicitly_several_distinct_candidates_come_greedy_first(
    client, uri, tiny_checkpoint, scripted_checkpoint
):
    """VS Code asks again with triggerKind Invoked when the user cycles (Alt+])."""
    await use_model(client, tiny_checkpoint, maxTokens=6, multiline="never")
    try:
        open_document(client, uri, "def add(a, b):\n    return \n")
        at = types.Position(1, 11)
        typing = await inline(client, uri, at)
        asked = await inline(client, uri, at, types.InlineCompletionTriggerKind.Invoked)
        texts = [item.insert_text for item in asked]
        assert 2 <= len(texts) <= 3 and len(set(texts)) == len(texts)
        assert [item.insert_text for item in typing] == texts[:1]  # the greedy one, as shown while typing
        assert all(item.range == types.Range(types.Position(1, 0), at) for item in asked)
    finally:
        await use_model(client, scripted_checkpoint)


async def test_the_completion_after_an_accept_is_ready_before_it_is_asked_for(client, uri):
    """Prefetch: while an item is shown, the server computes the one that follows accepting it."""
    open_document(client, uri, "def add(a, b):\n    \n\n\ndef sub(a, b):\n    return a - b\n")
    [shown] = await inline(client, uri, BODY)
    before = await idle(client)
    # Accepting, as VS Code does: the item's text replaces its range, then its command runs.
    replace(client, uri, shown.range, shown.insert_text)
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(shown.command.command, shown.command.arguments)
    )
    after_accept = types.Position(1, len(shown.insert_text))
    next_items = await inline(client, uri, after_accept)
    after = await idle(client)
    assert delta(before, after, "prefetched", "served") == {"prefetched": 1, "served": 1}  # served by the prefetch
    # The same answer a request without prefetch gets.
    await configure(client, {"prefetch": False})
    try:
        cold = await inline(client, uri, after_accept)
        assert [i.insert_text for i in next_items] == [i.insert_text for i in cold]
    finally:
        await configure(client, {"prefetch": True})
