"""The `codellama-lsp` command: serve (the default), complete, check, convert.

The engine (and with it torch, seconds to import) is imported inside the commands that
use it, so that `codellama-lsp` answers the editor's `initialize` at once and loads the
model in the background.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.options import (
    COMPILE_MODES,
    DTYPES,
    EXPORT_FORMATS,
    INFILL_FORMATS,
    MULTILINE_MODES,
    SAVED_QUANTIZATIONS,
    CompletionSettings,
    add_model_arguments,
)
from lsp.settings import BackendSettings, Settings

DEFAULT_PORT = 2087
COMPILE_ENV = "CODELLAMA_LSP_COMPILE"
"""The --compile default, for editors that start the server with a fixed command line."""


def compile_default() -> str:
    value = os.environ.get(COMPILE_ENV) or "auto"
    if value not in COMPILE_MODES:
        choices = ", ".join(COMPILE_MODES)
        raise SystemExit(f"codellama-lsp: error: ${COMPILE_ENV} is {value!r}: expected one of {choices}")
    return value


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, not a bug: reported in one line, exit status 2."""
    from engine.backend import PromptTooLong
    from engine.checkpoints import CheckpointError
    from engine.quantize import QuantizationError
    from engine.tokenizer import TokenizerError
    from engine.wire import BackendError

    return (CheckpointError, TokenizerError, QuantizationError, PromptTooLong, BackendError, ValueError, OSError)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (server and check: default one CPU less than torch's choice)"
    )


def backend_settings(args: argparse.Namespace) -> BackendSettings:
    return BackendSettings(args.backend, args.backend_kind, args.backend_api_key_env, args.backend_model)


def load_engine(args: argparse.Namespace, max_seq_len: int = 4096, cache_slots: int = 2):
    from engine import loader

    if args.backend:
        from lsp.loading import ModelSpec, connect

        settings = Settings(model=args.model, backend=backend_settings(args))
        served = connect(ModelSpec.from_settings(settings))
        print(f"connected to {served.describe()}", file=sys.stderr)
        return served.engine
    loaded = loader.load_engine(
        args.model, args.device, args.dtype, args.quantize, max_seq_len=max_seq_len, cache_slots=cache_slots,
        threads=getattr(args, "threads", None),
    )  # fmt: skip
    print(f"loaded {loaded.describe()}", file=sys.stderr)
    return loaded.engine


def parse_location(location: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL, 1-based; COL counts characters and may be one past the line's end."""
    try:
        file, line, col = location.rsplit(":", 2)
        return Path(file), int(line), int(col)
    except ValueError:
        raise ValueError(f"{location!r}: expected FILE:LINE:COL, e.g. main.py:12:5") from None


def cursor_offset(text: str, file: Path, line: int, col: int) -> int:
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"{file}:{line}:{col}: line {line} is outside the file (1..{len(lines)})")
    if not 1 <= col <= len(lines[line - 1]) + 1:
        raise ValueError(f"{file}:{line}:{col}: column {col} is outside line {line} (1..{len(lines[line - 1]) + 1})")
    return sum(len(s) + 1 for s in lines[: line - 1]) + col - 1


def run_complete(args: argparse.Namespace) -> int:
    from engine.options import PromptSettings
    from engine.pipeline import Pipeline, Snapshot

    file, line, col = parse_location(args.location)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not UTF-8 text ({e})") from e
    offset = cursor_offset(text, file, line, col)
    engine = load_engine(args)
    settings = CompletionSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        multiline=args.multiline,
        max_lines=args.max_lines,
        time_budget_ms=round(args.time_budget * 1000) if args.time_budget else 120_000,
        prompt=PromptSettings(format=args.format),
    )
    sampling = {"top_p": args.top_p, "seed": args.seed, **({"stop": tuple(args.stop)} if args.stop else {})}
    done = Pipeline(engine).complete(
        Snapshot(text, offset, language_id(file), known_line=line - 1),
        settings,
        raw=args.raw,
        token_healing=not args.no_token_healing,
        sampling=sampling,
    )
    if args.raw:
        sys.stdout.write(done.raw)
    elif done.edit is not None:
        sys.stdout.write(done.edit.text)
    sys.stdout.flush()
    s = done.stats
    shown = "the model's middle (--raw)" if args.raw else "what an editor shows" if done.edit else "nothing to show"
    print(
        f"\nprompt {s.prompt_tokens} tokens (prefilled {s.prefilled_tokens}) in {s.prefill_s * 1000:.0f} ms; "
        f"generated {s.generated_tokens} tokens in {s.decode_s * 1000:.0f} ms "
        f"({s.decode_tokens_per_s:.1f} tokens/s); stopped: {s.stop_reason}; printed: {shown}",
        file=sys.stderr,
    )
    return 0


def language_id(file: Path) -> str:
    """The LSP language id of a file, as editors name it (for the context comments' syntax)."""
    names = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust", ".lua": "lua"}
    names |= {".c": "c", ".h": "c", ".cpp": "cpp", ".java": "java", ".rb": "ruby", ".sh": "shellscript"}
    return names.get(file.suffix.lower(), file.suffix.lstrip(".").lower())


def run_convert(args: argparse.Namespace) -> int:
    from engine.checkpoints import TORCH_DTYPES, load_model
    from engine.export import export_model
    from engine.loader import model_path

    path = model_path(args.model)
    load_dtype = "float32" if args.dtype == "auto" else args.dtype
    model, tokenizer, info = load_model(path, "cpu", load_dtype)
    # native keeps the dtype it was loaded in; hf and gguf write the one asked (fp32 by default)
    dtype = None if args.format == "native" and args.dtype == "auto" else TORCH_DTYPES[load_dtype]
    out = export_model(model, tokenizer.path, args.out, args.format, dtype, args.quantize)
    print(f"wrote {out} ({info.format} -> {args.format}, quantization {args.quantize})", file=sys.stderr)
    return 0


def configure_logging(log_file: str | None, level: str | None) -> None:
    # stdout carries the protocol over stdio: logs go to stderr (editors show it) or a file.
    handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    numeric = getattr(logging, (level or ("info" if log_file else "warning")).upper())
    logging.basicConfig(level=numeric, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pygls logs every message body at INFO: megabytes per keystroke with large documents.
    logging.getLogger("pygls").setLevel(max(numeric, logging.WARNING))


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_file, args.log_level)
    from lsp.loading import ModelSpec
    from lsp.serve import serve_stdio, serve_tcp

    base = Settings(model=args.model, device=args.device, quantize=args.quantize, backend=backend_settings(args))

    def configure(session) -> None:
        session.base_settings = base
        session.dtype, session.threads, session.compile = args.dtype, args.threads, args.compile

    if args.tcp:
        spec = ModelSpec.from_settings(base, args.dtype, args.threads, args.compile)
        return serve_tcp(configure, args.host, args.port, spec)
    return serve_stdio(configure)


def run_check_command(args: argparse.Namespace) -> int:
    from lsp.check import run_check

    return run_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codellama-lsp",
        description="Code Llama infilling language server. With no command, serves LSP over stdio.",
    )
    add_engine_options(parser)
    parser.add_argument("--tcp", action="store_true", help="serve over TCP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--compile", default=compile_default(), choices=COMPILE_MODES,
        help="compile the decode step with torch.compile, used where it measures faster (auto: on GPU, and on CPU "
        f"for models under 1 GiB; compiled in the background while the eager step answers; default: "
        f"${COMPILE_ENV} or auto)",
    )  # fmt: skip
    parser.add_argument("--log-file", help="write the server's log here instead of stderr")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info to a file, warning to stderr"
    )
    parser.set_defaults(run=run_serve)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check", help="load the model and run a test completion: what is wrong?")
    add_engine_options(check)
    check.add_argument("--max-tokens", type=int, default=32)
    check.set_defaults(run=run_check_command)

    complete = commands.add_parser(
        "complete", help="print the completion an editor would show at FILE:LINE:COL (1-based)"
    )
    add_engine_options(complete)
    complete.add_argument("location", metavar="FILE:LINE:COL")
    complete.add_argument("--raw", action="store_true", help="print the model's middle, before post-processing")
    complete.add_argument("--max-tokens", type=int, default=128)
    complete.add_argument("--multiline", choices=MULTILINE_MODES, default="auto", help="as the server's setting")
    complete.add_argument("--max-lines", type=int, default=CompletionSettings.max_lines)
    complete.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    complete.add_argument("--top-p", type=float, default=0.9)
    complete.add_argument("--format", choices=INFILL_FORMATS, default="spm", help="prompt layout (default spm)")
    complete.add_argument("--no-token-healing", action="store_true", help="SPM: do not heal the prefix's last token")
    complete.add_argument("--stop", action="append", help="stop string (repeatable)")
    complete.add_argument("--time-budget", type=float, help="seconds; stop decoding after this")
    complete.add_argument("--seed", type=int)
    complete.set_defaults(run=run_complete)

    convert = commands.add_parser(
        "convert",
        help="save any checkpoint the engine loads for our engine (native), transformers/vLLM (hf) or llama.cpp (gguf)",
    )
    convert.add_argument("--model", help="checkpoint folder; default: the shipped model")
    convert.add_argument("--out", required=True, help="output folder (gguf: a .gguf file)")
    convert.add_argument("--format", default="native", choices=EXPORT_FORMATS, help="default native (codellama-lsp)")
    convert.add_argument("--quantize", default="none", choices=SAVED_QUANTIZATIONS, help="gguf: int8 writes Q8_0")
    convert.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float32 (native: as loaded)")
    convert.set_defaults(run=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"codellama-lsp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
