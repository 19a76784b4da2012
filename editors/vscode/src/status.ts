/** What the status-bar item shows for a `codellama/status` payload (lsp/PROTOCOL.md). */

export interface ServerStatus {
  state: "loading" | "ready" | "error" | "disabled";
  model: string;
  device: string;
  quantize: string;
  message: string | null;
  requests: number;
  served: number;
  cancelled: number;
  typedThrough: number;
  cacheHits: number;
  tokensPrefilled: number;
  accepted: number;
  latencyMs: { last: number | null; p50: number | null; p95: number | null };
  version: string;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** Errors get the theme's error background so a dead server is noticed. */
  isError: boolean;
}

const ICONS: Record<ServerStatus["state"], string> = {
  loading: "$(loading~spin)",
  ready: "$(sparkle)",
  error: "$(error)",
  disabled: "$(circle-slash)",
};

function milliseconds(value: number | null): string {
  return value === null ? "-" : `${Math.round(value)} ms`;
}

export function statusView(status: ServerStatus): StatusView {
  let text = `${ICONS[status.state]} Code Llama`;
  if (status.state === "ready" && status.latencyMs.last !== null) {
    text += ` ${milliseconds(status.latencyMs.last)}`;
  } else if (status.state !== "ready") {
    text += `: ${status.state}`;
  }
  const lines = [
    `codellama-lsp ${status.version}: ${status.state}${status.message ? ` (${status.message})` : ""}`,
    `model ${status.model} on ${status.device}, quantization ${status.quantize}`,
    `latency last ${milliseconds(status.latencyMs.last)}, p50 ${milliseconds(status.latencyMs.p50)}, ` +
      `p95 ${milliseconds(status.latencyMs.p95)}`,
    `${status.served} served of ${status.requests} requests, ${status.accepted} accepted, ` +
      `${status.cancelled} cancelled, ${status.typedThrough} typed through`,
    "Click to show the log",
  ];
  return { text, tooltip: lines.join("\n"), isError: status.state === "error" };
}

/** Before the server has said anything, or when it could not be started at all. */
export function startingView(): StatusView {
  return { text: `${ICONS.loading} Code Llama: starting`, tooltip: "Starting codellama-lsp", isError: false };
}

export function failedView(reason: string): StatusView {
  return { text: `${ICONS.error} Code Llama: error`, tooltip: `${reason}\nClick to show the log`, isError: true };
}
