/**
 * The whole extension in node: activate() with the vscode stub, the real vscode-languageclient
 * and the real codellama-lsp on the tiny model. What VS Code would show is read off the stub:
 * the status-bar item, the registered inline-completion provider and its items, the commands.
 */
import "./register-vscode";
import { strict as assert } from "node:assert";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { activate, deactivate } from "../src/extension";
import { CURSOR, PYTHON_SOURCE, serverPath, tinyModel, waitFor } from "./fixtures";
import * as vscode from "./vscode-stub";
import { editor, recorded } from "./vscode-stub";

const manifest = JSON.parse(readFileSync(join(__dirname, "..", "..", "package.json"), "utf8"));
const context = { subscriptions: [] as { dispose(): unknown }[] };
let document: vscode.TextDocument;

const statusItem = () => recorded.statusBarItems[0];

/** What the provider returns at `position`; `selected` is the item highlighted in the suggest menu. */
async function complete(position = new vscode.Position(CURSOR.line, CURSOR.character), selected?: vscode.SelectedCompletionInfo) {
  const entry = recorded.inlineProviders.find(({ selector }) => vscode.install().languages.match(selector, document) > 0);
  assert.ok(entry, "no inline-completion provider is registered for Python");
  const token = new vscode.CancellationTokenSource().token;
  const context = { triggerKind: vscode.InlineCompletionTriggerKind.Automatic, selectedCompletionInfo: selected };
  const result = await entry.provider.provideInlineCompletionItems(document, position, context, token);
  return result === undefined || result === null ? [] : Array.isArray(result) ? result : result.items;
}

before(async () => {
  vscode.reset();
  editor.loadDefaults();
  editor.setSetting("codellama.serverPath", serverPath());
  editor.setSetting("codellama.model", tinyModel());
  editor.setSetting("codellama.device", "cpu");
  editor.setSetting("codellama.maxTokens", 24);
  document = editor.open("/tmp/codellama-vscode-test/add.py", "python", PYTHON_SOURCE);
  await activate(context as never);
});

after(async () => {
  if (process.env.CODELLAMA_TEST_VERBOSE) console.error("vscode API reached but not stubbed:", [...recorded.unimplemented]);
  await deactivate();
  for (const disposable of context.subscriptions) disposable.dispose();
});

test("activate registers every contributed command", () => {
  for (const { command } of manifest.contributes.commands) {
    assert.ok(recorded.commands.has(command), `${command} is in package.json but not registered`);
  }
  // The server's own command, registered by vscode-languageclient from executeCommandProvider.
  assert.ok(recorded.commands.has("codellama.accept"));
});

test("the status bar shows ready once the model is loaded", async () => {
  await waitFor("the ready status", () => /^\$\(sparkle\) Code Llama/.test(statusItem().text));
  assert.equal(statusItem().visible, true);
  assert.equal(statusItem().command, "codellama.showLog");
  assert.match(statusItem().tooltip!, /codellama-lsp .*: ready/);
});

test("ghost text: an InlineCompletionItem replacing the line up to the cursor, then latency in the status bar", async () => {
  const items = await complete();
  assert.ok(items.length > 0, `no completion; log:\n${recorded.outputLines.join("\n")}`);
  const item = items[0];
  assert.ok(item instanceof vscode.InlineCompletionItem);
  assert.deepEqual(item.range, new vscode.Range(CURSOR.line, 0, CURSOR.line, CURSOR.character));
  const insertText = item.insertText as string;
  assert.ok(insertText.startsWith("    return ") && insertText.length > "    return ".length, insertText);
  await waitFor("the latency", () => /^\$\(sparkle\) Code Llama \d+ ms$/.test(statusItem().text));

  // Accepting runs the item's command, which vscode-languageclient forwards to the server.
  assert.equal(item.command?.command, "codellama.accept");
  await vscode.install().commands.executeCommand(item.command!.command, ...(item.command!.arguments ?? []));
  await complete();
  await waitFor("the accepted count", () => /1 accepted/.test(statusItem().tooltip!), 10_000);
});

test("edits reach the server: a completion at the new cursor starts with the new line", async () => {
  editor.edit(document, "def add(a, b):\n    total = a + b\n    return \n");
  const items = await complete(new vscode.Position(2, "    return ".length));
  assert.ok(items.length > 0);
  assert.deepEqual(items[0].range, new vscode.Range(2, 0, 2, "    return ".length));
  editor.edit(document, PYTHON_SOURCE);
});

test("with a suggest-menu item selected, the ghost text extends that item (LSP 3.18 selectedCompletionInfo)", async () => {
  // The menu offers "return" for the typed "re": vscode-languageclient must pass the item on,
  // and the server must complete the line as if it were accepted.
  editor.edit(document, "def add(a, b):\n    re\n");
  const selected = { range: new vscode.Range(1, 4, 1, 6), text: "return" };
  const items = await complete(new vscode.Position(1, 6), selected);
  assert.ok(items.length > 0, `no completion; log:\n${recorded.outputLines.join("\n")}`);
  assert.deepEqual(items[0].range, new vscode.Range(1, 0, 1, 6));
  const insertText = items[0].insertText as string;
  assert.ok(insertText.startsWith("    return") && insertText.length > "    return".length, insertText);
  editor.edit(document, PYTHON_SOURCE);
});

test("Toggle Completions flips codellama.enable and the server stops and resumes serving", async () => {
  await vscode.install().commands.executeCommand("codellama.toggle");
  assert.equal(editor.getSetting("codellama.enable"), false);
  await waitFor("the disabled status", () => statusItem().text === "$(circle-slash) Code Llama: disabled", 10_000);
  assert.deepEqual(await complete(), []);
  await vscode.install().commands.executeCommand("codellama.toggle");
  assert.equal(editor.getSetting("codellama.enable"), true);
  await waitFor("the ready status", () => statusItem().text.startsWith("$(sparkle)"), 10_000);
  assert.ok((await complete()).length > 0);
});

test("Show Log opens the Code Llama output", async () => {
  await vscode.install().commands.executeCommand("codellama.showLog");
  assert.deepEqual(recorded.shownOutputChannels, ["Code Llama"]);
});

test("Restart Server starts a new server that serves completions", async () => {
  recorded.executed.length = 0;
  await vscode.install().commands.executeCommand("codellama.restart");
  await waitFor("the ready status", () => statusItem().text.startsWith("$(sparkle)"));
  // Typed while the model loaded, a document got no ghost text: once ready, VS Code is asked again.
  await waitFor("a new inline-suggest request", () => recorded.executed.includes("editor.action.inlineSuggest.trigger"), 10_000);
  assert.match(statusItem().tooltip!, /0 served/, "the status should come from the new process");
  assert.ok((await complete()).length > 0);
});

test("serverArgs reach the server command (a restart): --log-file gets the server's log", async () => {
  const logFile = join(mkdtempSync(join(tmpdir(), "codellama-args-")), "server.log");
  editor.setSetting("codellama.serverArgs", ["--log-file", logFile, "--log-level", "info"]);
  await waitFor("the server's log file", () => existsSync(logFile) && /loaded/.test(readFileSync(logFile, "utf8")), 60_000);
  await waitFor("the ready status", () => statusItem().text.startsWith("$(sparkle)"));
  assert.ok((await complete()).length > 0);
  editor.setSetting("codellama.serverArgs", []);
  await waitFor("the ready status", () => statusItem().text.startsWith("$(sparkle)"));
});

test("a serverPath that does not exist shows an error in the status bar", async () => {
  editor.setSetting("codellama.serverPath", "/nonexistent/codellama-lsp");
  // Restarting passes through "stopped" (also an error view): wait for the failed start itself.
  await waitFor("the start failure", () => /could not start/.test(statusItem().tooltip!), 10_000);
  assert.equal(statusItem().text, "$(error) Code Llama: error");
  assert.match(statusItem().tooltip!, /ENOENT/);
  assert.equal(statusItem().backgroundColor?.id, "statusBarItem.errorBackground");
});
