"""Speculative decoding by prompt lookup: does it pay on real edits?

    python -m lsp.lookup_bench --repo PATH [--model PATH] [--commits 40] [--max-tasks 120] [--compile auto]

Edits replayed from a repository's git history, as lsp.context_bench builds them (each
hunk's last added line cut out, the file as it was at that moment, the commit's other files
open). Each task is completed twice in the same run, greedy, with prompt lookup off and on,
the same prompt and KV-cache state: once as the editor gets it (post-processed, the line or
block), once raw (48 tokens, post-processing off, which is where drafting has room). Printed:
decode tokens/s both ways and their ratio, the drafts' acceptance rate, and how many outputs
were identical (they must all be). The decode step is the server's (`--compile auto`: on CPU
the C step where it runs the model and measures faster), so drafts are checked as served.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

from engine.machine import describe_machine
from engine.options import COMPILE_MODES, CompletionSettings
from engine.pipeline import Pipeline, Snapshot
from lsp.context_bench import Task, commit_tasks, git
from training.filters import FilterOptions


def measure(pipeline: Pipeline, tasks: list[Task], settings: CompletionSettings, raw: bool) -> dict:
    totals = {
        lookup: {"tokens": 0, "decode_s": 0.0, "drafted": 0, "accepted": 0, "texts": []} for lookup in (False, True)
    }
    for task in tasks:
        snap = Snapshot(task.line.text, len(task.line.prefix), "python" if task.path.endswith(".py") else "",
                        task.open_files)  # fmt: skip
        for lookup in (False, True):  # same prompt, same cache state: the first of the two warms it
            pipeline.engine.reset_cache()
            done = pipeline.complete(snap, settings, raw=raw, sampling={"prompt_lookup": lookup})
            t = totals[lookup]
            t["tokens"] += done.stats.generated_tokens
            t["decode_s"] += done.stats.decode_s
            t["drafted"] += done.stats.drafted_tokens
            t["accepted"] += done.stats.accepted_tokens
            t["texts"].append(done.raw)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsp.lookup_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--max-tasks", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto", help="the decode step, as the server's")
    args = parser.parse_args(argv)

    from engine.loader import load_engine

    commits = git(args.repo, "log", "--no-merges", f"-n{args.commits}", "--format=%H").split()
    tasks: list[Task] = []
    for commit in reversed(commits):
        try:
            tasks += commit_tasks(args.repo, commit, FilterOptions())
        except subprocess.CalledProcessError:
            continue
    tasks = tasks[: args.max_tasks]
    loaded = load_engine(args.model, "cpu", cache_slots=1, threads=args.threads)
    report = loaded.engine.prepare_decode(args.compile)
    pipeline = Pipeline(loaded.engine)
    shown = CompletionSettings(max_tokens=64, time_budget_ms=120_000)
    print(f"model: {loaded.describe()}; {report.describe()}")
    print(f"machine: {describe_machine()}; {time.strftime('%Y-%m-%d')}; {args.threads} torch thread(s)")
    print(f"repository {args.repo}: {len(commits)} commits, {len(tasks)} tasks")
    print()
    print("| completions | lookup | tokens | decode tokens/s | vs off | drafts kept | identical to off |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, settings, raw in (("as shown (post-processed)", shown, False),
                                 ("raw, 48 tokens", dataclasses.replace(shown, max_tokens=48), True)):  # fmt: skip
        totals = measure(pipeline, tasks, settings, raw)
        off = totals[False]
        rate_off = off["tokens"] / off["decode_s"] if off["decode_s"] else 0.0
        for lookup in (False, True):
            t = totals[lookup]
            rate = t["tokens"] / t["decode_s"] if t["decode_s"] else 0.0
            kept = f"{100 * t['accepted'] / t['drafted']:.0f}% of {t['drafted']}" if t["drafted"] else "-"
            same = sum(a == b for a, b in zip(t["texts"], off["texts"], strict=True))
            print(f"| {label} | {'on' if lookup else 'off'} | {t['tokens']} | {rate:.0f} | "
                  f"{rate / rate_off if rate_off else 0:.2f}x | {kept} | {same}/{len(tasks)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
