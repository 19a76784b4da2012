import { strict as assert } from "node:assert";
import { test } from "node:test";
import { failedView, ServerStatus, startingView, statusView } from "../src/status";

function status(overrides: Partial<ServerStatus>): ServerStatus {
  return {
    state: "ready",
    model: "CodeLlama-7b",
    device: "cuda",
    quantize: "int8",
    message: null,
    requests: 10,
    served: 8,
    cancelled: 2,
    typedThrough: 3,
    cacheHits: 5,
    tokensPrefilled: 900,
    accepted: 4,
    latencyMs: { last: 123.4, p50: 98.6, p95: 250 },
    version: "0.1.0",
    ...overrides,
  };
}

test("ready shows the last latency, rounded", () => {
  const view = statusView(status({}));
  assert.equal(view.text, "$(sparkle) Code Llama 123 ms");
  assert.equal(view.isError, false);
  assert.match(view.tooltip, /model CodeLlama-7b on cuda, quantization int8/);
  assert.match(view.tooltip, /latency last 123 ms, p50 99 ms, p95 250 ms/);
  assert.match(view.tooltip, /8 served of 10 requests, 4 accepted, 2 cancelled, 3 typed through/);
});

test("ready before any completion shows no latency", () => {
  const view = statusView(status({ latencyMs: { last: null, p50: null, p95: null } }));
  assert.equal(view.text, "$(sparkle) Code Llama");
  assert.match(view.tooltip, /latency last -, p50 -, p95 -/);
});

test("loading spins, disabled is crossed out, error is marked as an error with the server's message", () => {
  assert.equal(statusView(status({ state: "loading" })).text, "$(loading~spin) Code Llama: loading");
  assert.equal(statusView(status({ state: "disabled" })).text, "$(circle-slash) Code Llama: disabled");
  const error = statusView(status({ state: "error", message: "CUDA out of memory" }));
  assert.equal(error.text, "$(error) Code Llama: error");
  assert.equal(error.isError, true);
  assert.match(error.tooltip, /error \(CUDA out of memory\)/);
});

test("starting and failed views", () => {
  assert.equal(startingView().isError, false);
  const failed = failedView("codellama-lsp could not start: spawn codellama-lsp ENOENT");
  assert.equal(failed.isError, true);
  assert.match(failed.tooltip, /ENOENT/);
});
