import { strict as assert } from "node:assert";
import { test } from "node:test";
import { plainSection, serverCommand, serverSettings } from "../src/settings";

test("client-only settings stay in the extension; the rest goes to the server", () => {
  const section = {
    enable: true,
    model: "/models/7b",
    maxTokens: 64,
    serverPath: "/venv/bin/codellama-lsp",
    trace: { server: "verbose" },
  };
  assert.deepEqual(serverSettings(section), { enable: true, model: "/models/7b", maxTokens: 64 });
});

test("a blank model means the shipped default, null on the wire", () => {
  assert.deepEqual(serverSettings({ model: "" }), { model: null });
  assert.deepEqual(serverSettings({ model: null }), { model: null });
});

test("settings the extension does not declare pass through to the server", () => {
  assert.deepEqual(serverSettings({ contextFiles: 4, stop: ["\n\n"] }), { contextFiles: 4, stop: ["\n\n"] });
});

test("the server command is the serverPath setting, codellama-lsp when blank", () => {
  assert.equal(serverCommand({ serverPath: " /opt/venv/bin/codellama-lsp " }), "/opt/venv/bin/codellama-lsp");
  assert.equal(serverCommand({ serverPath: "" }), "codellama-lsp");
  assert.equal(serverCommand({}), "codellama-lsp");
});

test("plainSection keeps a WorkspaceConfiguration's values and drops its methods", () => {
  const configuration = { enable: false, trace: { server: "off" }, get: () => 1, update: async () => undefined };
  assert.deepEqual(plainSection(configuration), { enable: false, trace: { server: "off" } });
});
