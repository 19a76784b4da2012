/**
 * The `codellama.*` settings split in two: what the extension itself uses (how to start the
 * server, tracing) and what it forwards to the server, as lsp/PROTOCOL.md's settings object.
 */

/** Read by the extension, never sent: the server would report them as unknown keys. */
const CLIENT_ONLY_KEYS = new Set(["serverPath", "serverArgs", "trace"]);

/** Keys whose change needs a new server process rather than a didChangeConfiguration. */
export const RESTART_KEYS = ["serverPath", "serverArgs", "classicCompletion"];

export const DEFAULT_SERVER_PATH = "codellama-lsp";

export type SettingsSection = Record<string, unknown>;

/**
 * The settings object for initializationOptions and workspace/didChangeConfiguration.
 * Keys the extension does not declare are passed through too, so a server setting documented
 * in the server's README works from settings.json without a new extension release.
 */
export function serverSettings(section: SettingsSection): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(section)) {
    if (CLIENT_ONLY_KEYS.has(key) || typeof value === "function" || value === undefined) {
      continue;
    }
    // An empty model box in the settings UI means "the shipped default", which is null on the wire.
    settings[key] = key === "model" && (value === "" || value === null) ? null : value;
  }
  return settings;
}

/** The server command: the serverPath setting, or `codellama-lsp` from PATH when it is blank. */
export function serverCommand(section: SettingsSection): string {
  const path = section.serverPath;
  return typeof path === "string" && path.trim() !== "" ? path.trim() : DEFAULT_SERVER_PATH;
}

/** The serverArgs setting: its strings, anything else dropped (a hand-edited settings.json may hold anything). */
export function serverArgs(section: SettingsSection): string[] {
  const args = section.serverArgs;
  return Array.isArray(args) ? args.filter((arg): arg is string => typeof arg === "string") : [];
}

/**
 * A plain copy of a WorkspaceConfiguration's values. The object VS Code returns also carries
 * get/has/inspect/update methods; a JSON round trip keeps only the data.
 */
export function plainSection(configuration: object): SettingsSection {
  return JSON.parse(JSON.stringify(configuration)) as SettingsSection;
}
