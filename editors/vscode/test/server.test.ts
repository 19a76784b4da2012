/**
 * The real codellama-lsp over stdio, driven with vscode-jsonrpc the way VS Code drives it: the
 * initialize capabilities are the ones vscode-languageclient computes for this extension (what
 * VS Code actually sends for it), and the requests are the ones VS Code makes for ghost text.
 */
import "./register-vscode";
import { strict as assert } from "node:assert";
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import {
  CancellationTokenSource,
  createMessageConnection,
  MessageConnection,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-jsonrpc/node";
import { LanguageClient } from "vscode-languageclient/node";
import { DOCUMENT_SELECTOR } from "../src/languages";
import { ServerStatus } from "../src/status";
import { CURSOR, PYTHON_SOURCE, pythonPath, serverPath, tinyModel, waitFor } from "./fixtures";

interface InlineItem {
  insertText: string;
  range: { start: { line: number; character: number }; end: { line: number; character: number } };
  command?: { command: string; arguments?: unknown[] };
}

/** What this extension's vscode-languageclient puts in `initialize`. */
function vscodeCapabilities(): Record<string, unknown> {
  const client = new LanguageClient("codellama", "Code Llama", { command: "unused" }, { documentSelector: DOCUMENT_SELECTOR });
  return (client as unknown as { computeClientCapabilities(): Record<string, unknown> }).computeClientCapabilities();
}

const URI = "file:///tmp/codellama-vscode-test/add.py";
let server: ChildProcess;
let connection: MessageConnection;
let serverLog = "";
let settings: Record<string, unknown>;
const statusNotifications: ServerStatus[] = [];
const shownMessages: string[] = [];

/** As the extension asks (src/extension.ts). */
async function status(): Promise<ServerStatus> {
  return connection.sendRequest<ServerStatus>("codellama/status", {});
}

async function inlineCompletion(token?: CancellationTokenSource): Promise<{ items: InlineItem[] } | InlineItem[] | null> {
  const params = {
    textDocument: { uri: URI },
    position: CURSOR,
    context: { triggerKind: 2 /* Automatic: typing, as VS Code asks */ },
  };
  // (vscode-jsonrpc would send a trailing `undefined` as a second positional param.)
  return token
    ? connection.sendRequest("textDocument/inlineCompletion", params, token.token)
    : connection.sendRequest("textDocument/inlineCompletion", params);
}

function itemsOf(result: { items: InlineItem[] } | InlineItem[] | null): InlineItem[] {
  return result === null ? [] : Array.isArray(result) ? result : result.items;
}

before(async () => {
  settings = { model: tinyModel(), device: "cpu", maxTokens: 24 };
  server = spawn(serverPath(), [], { stdio: ["pipe", "pipe", "pipe"] });
  server.stderr!.on("data", (chunk) => (serverLog += chunk));
  connection = createMessageConnection(new StreamMessageReader(server.stdout!), new StreamMessageWriter(server.stdin!));
  connection.onNotification("codellama/didChangeStatus", (payload: ServerStatus) => {
    statusNotifications.push(payload);
  });
  connection.onNotification("window/showMessage", (params: { message: string }) => {
    shownMessages.push(params.message);
  });
  connection.onRequest("window/workDoneProgress/create", () => null);
  connection.onRequest("client/registerCapability", () => null);
  connection.onRequest("workspace/configuration", (params: { items: unknown[] }) => params.items.map(() => null));
  connection.listen();

  const result = await connection.sendRequest<{ capabilities: Record<string, unknown> }>("initialize", {
    processId: process.pid,
    clientInfo: { name: "Visual Studio Code", version: "1.95.0" },
    locale: "en",
    rootUri: null,
    workspaceFolders: null,
    capabilities: vscodeCapabilities(),
    initializationOptions: settings,
  });
  const capabilities = result.capabilities;
  assert.ok(capabilities.inlineCompletionProvider, "no inlineCompletionProvider: VS Code would never ask for ghost text");
  // Inline completion is VS Code's only path: with a completionProvider too, a slow inline answer
  // makes VS Code open its suggest widget with the classic item, and Tab inserts that instead.
  assert.equal(capabilities.completionProvider, undefined, "completionProvider offered beside inline completion");
  const executeCommand = capabilities.executeCommandProvider as { commands: string[] } | undefined;
  assert.ok(executeCommand?.commands.includes("codellama.accept"), "codellama.accept is not an advertised command");
  await connection.sendNotification("initialized", {});
  await connection.sendNotification("textDocument/didOpen", {
    textDocument: { uri: URI, languageId: "python", version: 1, text: PYTHON_SOURCE },
  });
  await waitFor("the model to load", async () => (await status()).state === "ready");
});

after(async () => {
  if (connection) {
    await connection.sendRequest("shutdown");
    await connection.sendNotification("exit");
  }
  const code = await new Promise<number | null>((resolve) =>
    server.exitCode !== null ? resolve(server.exitCode) : server.on("exit", resolve),
  );
  connection?.dispose();
  assert.equal(code, 0, `codellama-lsp exited with ${code}; its log:\n${serverLog}`);
});

test("vscode-languageclient tells the server it can show inline completions", () => {
  const capabilities = vscodeCapabilities() as { textDocument: Record<string, unknown> };
  assert.deepEqual(capabilities.textDocument.inlineCompletion, { dynamicRegistration: true });
  // Everything a VS Code capture (pytest-lsp's, VS Code 1.65) offers, this client offers too.
  const clients = execFileSync(pythonPath(), ["-c", "import pytest_lsp, os; print(os.path.dirname(pytest_lsp.__file__))"])
    .toString()
    .trim();
  const captured = JSON.parse(readFileSync(join(clients, "clients", "visual_studio_code_v1.65.2.json"), "utf8"));
  for (const key of Object.keys(captured.capabilities.textDocument)) {
    assert.ok(key in capabilities.textDocument, `textDocument.${key} is in VS Code's capture but not sent`);
  }
});

test("codellama/status also answers a request without params, as PROTOCOL.md writes it", async () => {
  const answer = await connection.sendRequest<ServerStatus>("codellama/status");
  assert.equal(answer.state, "ready");
});

test("the server announced that the model is ready", () => {
  assert.ok(
    statusNotifications.some((payload) => payload.state === "ready"),
    `codellama/didChangeStatus never said ready: ${JSON.stringify(statusNotifications.map((s) => s.state))}`,
  );
});

test("inline completion: the item replaces the line up to the cursor with the line + ghost text", async () => {
  const items = itemsOf(await inlineCompletion());
  assert.ok(items.length > 0, `no completion; server log:\n${serverLog}`);
  const item = items[0];
  const linePrefix = PYTHON_SOURCE.split("\n")[CURSOR.line].slice(0, CURSOR.character);
  assert.deepEqual(item.range, { start: { line: CURSOR.line, character: 0 }, end: CURSOR });
  assert.ok(item.insertText.startsWith(linePrefix), `insertText ${JSON.stringify(item.insertText)}`);
  assert.ok(item.insertText.length > linePrefix.length, "the ghost text is empty");
  assert.equal(item.command?.command, "codellama.accept");

  // VS Code runs the item's command when the user accepts it with Tab.
  const before = await status();
  await connection.sendRequest("workspace/executeCommand", { command: "codellama.accept", arguments: item.command!.arguments });
  const afterAccept = await status();
  assert.equal(afterAccept.accepted, before.accepted + 1);
  assert.ok(afterAccept.served >= 1);
  assert.equal(typeof afterAccept.latencyMs.last, "number");
});

test("completion: not served to a client that has inline completion", async () => {
  await assert.rejects(
    connection.sendRequest("textDocument/completion", { textDocument: { uri: URI }, position: CURSOR, context: { triggerKind: 1 } }),
    (error: { code?: number }) => error.code === -32601,
  );
});

test("a cancelled request settles and the server keeps serving", async () => {
  const source = new CancellationTokenSource();
  const pending = inlineCompletion(source);
  source.cancel();
  await pending.then(
    () => undefined,
    (error: { code?: number }) => assert.equal(error.code, -32800, `unexpected error ${JSON.stringify(error)}`),
  );
  assert.ok(itemsOf(await inlineCompletion()).length > 0);
});

test("settings changes reach the server: enable=false stops completions", async () => {
  // VS Code sends the whole section on every change, never a delta.
  const send = (changes: Record<string, unknown>) =>
    connection.sendNotification("workspace/didChangeConfiguration", { settings: { codellama: { ...settings, ...changes } } });
  await send({ enable: false });
  await waitFor("the disabled state", async () => (await status()).state === "disabled", 10_000);
  assert.deepEqual(itemsOf(await inlineCompletion()), []);
  await send({ enable: true });
  await waitFor("the ready state", async () => (await status()).state === "ready", 10_000);
  assert.ok(itemsOf(await inlineCompletion()).length > 0);
  assert.deepEqual(shownMessages, [], "valid settings produced a warning");
});
