/** package.json against the code and against lsp/PROTOCOL.md, the server's contract. */
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { LANGUAGES } from "../src/languages";
import { serverSettings } from "../src/settings";
import { REPO_ROOT } from "./fixtures";

const manifest = JSON.parse(readFileSync(join(__dirname, "..", "..", "package.json"), "utf8"));
const properties: Record<string, { default: unknown; enum?: string[] }> = manifest.contributes.configuration.properties;

/** The settings table of lsp/PROTOCOL.md: key -> {type, default}, as written there ("prompt.format": nested). */
function protocolSettings(): Map<string, { type: string; default: unknown }> {
  const protocol = readFileSync(join(REPO_ROOT, "lsp", "PROTOCOL.md"), "utf8");
  const rows = new Map<string, { type: string; default: unknown }>();
  for (const match of protocol.matchAll(/^\| `([\w.]+)` \| ([^|]+) \| ([^|]+) \|/gm)) {
    rows.set(match[1], { type: match[2].trim(), default: JSON.parse(match[3].trim()) });
  }
  return rows;
}

test("the extension activates for exactly the languages its documentSelector serves", () => {
  assert.deepEqual(manifest.activationEvents, LANGUAGES.map((language) => `onLanguage:${language}`));
});

test("every server setting in PROTOCOL.md is a VS Code setting with the same default and choices", () => {
  const protocol = protocolSettings();
  assert.ok(protocol.size >= 14, `read only ${protocol.size} settings from PROTOCOL.md`);
  for (const [key, row] of protocol) {
    const property = properties[`codellama.${key}`];
    assert.ok(property, `PROTOCOL.md's ${key} has no codellama.${key} setting`);
    // The model box is a plain string so the Settings UI can edit it: "" is null on the wire.
    const expected = key === "model" && row.default === null ? "" : row.default;
    assert.deepEqual(property.default, expected, `default of ${key}`);
    const choices = [...row.type.matchAll(/"([^"]+)"/g)].map((match) => match[1]);
    if (choices.length > 0) assert.deepEqual(property.enum, choices, `choices of ${key}`);
  }
});

/** Dotted keys of a nested settings object: {prompt: {format: "spm"}} -> ["prompt.format", "spm"]. */
function flatten(settings: Record<string, unknown>, prefix = ""): [string, unknown][] {
  return Object.entries(settings).flatMap(([key, value]) =>
    value !== null && typeof value === "object" && !Array.isArray(value)
      ? flatten(value as Record<string, unknown>, `${prefix}${key}.`)
      : [[`${prefix}${key}`, value] as [string, unknown]],
  );
}

test("the defaults the extension sends are the server's own defaults", () => {
  // What VS Code's getConfiguration("codellama") holds with no user settings: dotted keys nest.
  const section: Record<string, unknown> = {};
  for (const [key, property] of Object.entries(properties)) {
    const path = key.split(".").slice(1);
    let node = section;
    for (const part of path.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>;
    node[path[path.length - 1]] = property.default;
  }
  const protocol = protocolSettings();
  const sent = flatten(serverSettings(section));
  assert.ok(sent.length >= protocol.size, `sends ${sent.length} settings`);
  for (const [key, value] of sent) {
    assert.ok(protocol.has(key), `the extension sends ${key}, which PROTOCOL.md does not define`);
    assert.deepEqual(value, protocol.get(key)!.default, key);
  }
});
