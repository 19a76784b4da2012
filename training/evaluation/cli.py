"""The `eval` command: score a checkpoint (or a baseline) on the infilling benchmarks."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from engine.checkpoints import CheckpointError
from engine.loader import load_engine
from engine.options import add_model_arguments
from engine.quantize import QuantizationError
from engine.tokenizer import TokenizerError
from training.evaluation.completers import (
    BASELINES,
    MULTI_LINE_MAX_NEW_TOKENS,
    SINGLE_LINE_MAX_NEW_TOKENS,
    BaselineCompleter,
    Completer,
    ModelCompleter,
    StopRule,
)
from training.evaluation.evaluate import TaskResult, evaluate_humaneval, evaluate_repo_lines
from training.evaluation.humaneval import BENCHMARK_NAMES, BenchmarkDataError, evenly_spaced, load_tasks
from training.evaluation.repo_lines import RepoError, sample_line_tasks
from training.evaluation.report import NAMES, format_table, summarize, write_json
from training.evaluation.sandbox import Limits, ProgramRunner

TASKS = ("single", "multi", "repo")
FORMATS = ("psm", "spm")
# The KV cache is preallocated; the benchmarks' prompts are far shorter than this.
MAX_CACHE_TOKENS = 4096
USER_ERRORS = (CheckpointError, TokenizerError, QuantizationError, BenchmarkDataError, RepoError, ValueError, OSError)


def comma_list(choices: tuple[str, ...]):
    def parse(value: str) -> list[str]:
        items = [v.strip().lower() for v in value.split(",") if v.strip()]
        unknown = [v for v in items if v not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"{value!r}: expected a comma-separated list of {', '.join(choices)}")
        return list(dict.fromkeys(items))

    return parse


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", help="checkpoint folder (Hugging Face, Meta or codellama-lsp); default: the shipped model"
    )
    source.add_argument("--baseline", choices=sorted(BASELINES), help="score a model-free baseline instead")
    add_model_arguments(parser, model=False)
    parser.add_argument(
        "--tasks",
        type=comma_list(TASKS),
        help="comma-separated: single, multi (HumanEval infilling), repo (exact match on --repo); "
        "default: single,multi, plus repo when --repo is given",
    )
    parser.add_argument("--formats", type=comma_list(FORMATS), default=list(FORMATS), help="default: psm,spm")
    parser.add_argument("--limit", type=positive_int, help="at most N tasks per benchmark (an evenly spread subset)")
    parser.add_argument("--repo", type=Path, help="a held-out git repository for the exact-match benchmark")
    parser.add_argument("--repo-lines", type=positive_int, default=500, help="lines to sample from --repo (500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --repo line sample (0)")
    parser.add_argument("--out", type=Path, help="write scores and per-task results as JSON here")
    parser.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1), help="programs at once")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program (3, as OpenAI's harness)")
    parser.add_argument("--token-healing", action="store_true", help="heal SPM prompts (default: Meta's prompt)")
    parser.add_argument(
        "--max-new-tokens-single",
        type=positive_int,
        default=SINGLE_LINE_MAX_NEW_TOKENS,
        help=f"token limit for single-line and repo tasks ({SINGLE_LINE_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--max-new-tokens-multi",
        type=positive_int,
        default=MULTI_LINE_MAX_NEW_TOKENS,
        help=f"token limit for multi-line tasks ({MULTI_LINE_MAX_NEW_TOKENS})",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="score a checkpoint on HumanEval infilling and repository lines",
        description="HumanEval infilling pass@1 (single/multi-line, PSM/SPM, greedy) and exact match on lines "
        "cut out of a held-out repository.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def load_completer(args: argparse.Namespace) -> tuple[Completer, dict]:
    if args.baseline:
        return BaselineCompleter(args.baseline), {"baseline": args.baseline}
    loaded = load_engine(
        args.model, args.device, args.dtype, args.quantize, max_seq_len=MAX_CACHE_TOKENS, cache_slots=1
    )
    details = {
        "model": loaded.path,
        "checkpoint_format": loaded.info.format,
        "parameters": loaded.parameters,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "quantize": loaded.quantization,
        "token_healing": args.token_healing,
    }
    print(f"loaded {loaded.describe()}", file=sys.stderr)
    engine = loaded.engine
    return ModelCompleter(engine, args.token_healing), details


def run(args: argparse.Namespace) -> int:
    try:
        return evaluate(args)
    except USER_ERRORS as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2


def evaluate(args: argparse.Namespace) -> int:
    tasks = args.tasks or ["single", "multi"] + (["repo"] if args.repo else [])
    if "repo" in tasks and not args.repo:
        raise ValueError("--tasks repo needs --repo PATH (a held-out git repository)")
    if args.timeout <= 0:
        raise ValueError(f"--timeout {args.timeout}: expected a positive number of seconds")
    humaneval = {name: evenly_spaced(load_tasks(name), args.limit) for name in tasks if name in BENCHMARK_NAMES}
    repo_tasks = sample_line_tasks(args.repo, args.limit or args.repo_lines, args.seed) if "repo" in tasks else []
    completer, details = load_completer(args)
    # A baseline's middle does not depend on the prompt format: score it once.
    formats = ["any"] if args.baseline else args.formats
    rules = {
        "single": StopRule(args.max_new_tokens_single, single_line=True),
        "multi": StopRule(args.max_new_tokens_multi, single_line=False),
        "repo": StopRule(args.max_new_tokens_single, single_line=True),
    }
    total = (sum(len(t) for t in humaneval.values()) + len(repo_tasks)) * len(formats)
    started = time.perf_counter()
    results: list[TaskResult] = []
    limits = Limits(timeout_s=args.timeout)
    with ProgramRunner(args.workers, limits) as runner, tqdm(total=total, unit="task", file=sys.stderr) as bar:
        for name in tasks:
            for fmt in formats:
                bar.set_description(f"{NAMES[name]} {fmt.upper()}")
                if name == "repo":
                    results += evaluate_repo_lines(repo_tasks, fmt, completer, rules[name], bar)
                else:
                    results += evaluate_humaneval(humaneval[name], name, fmt, completer, rules[name], runner, bar)
    elapsed = time.perf_counter() - started
    scores = summarize(results)
    title = f"{completer.name}: {details.get('model', '')}".rstrip(": ")
    print(format_table(scores, title))
    if args.out:
        settings = {
            **details,
            "tasks": tasks,
            "formats": formats,
            "limit": args.limit,
            "repo": str(args.repo) if args.repo else None,
            "repo_lines": len(repo_tasks),
            "seed": args.seed,
            "stop_rules": {name: vars(rule) for name, rule in rules.items()},
            "timeout_s": args.timeout,
            "workers": args.workers,
            "elapsed_s": round(elapsed, 1),
        }
        write_json(args.out, settings, scores, results)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
