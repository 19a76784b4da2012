"""The `codellama-train` command (also `python -m training`).

Each subcommand lives in its own module and registers itself with `add_parser(subparsers)`,
setting `run(args) -> exit code` as its handler.
"""

from __future__ import annotations

import argparse

from training import corpus, export, fit, prepare, train_tokenizer
from training.evaluation import cli as evaluation_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codellama-train",
        description="Fine-tune Code Llama fill-in-the-middle models on a team's repositories.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare.add_parser(subparsers)
    train_tokenizer.add_parser(subparsers)
    fit.add_parser(subparsers)
    export.add_parser(subparsers)
    corpus.add_parser(subparsers)
    evaluation_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
