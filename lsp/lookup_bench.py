"""Speculative decoding by prompt lookup: does it pay on real edits?

    python -m lsp.lookup_bench --repo PATH [--model PATH] [--commits 40] [--max-tasks 120] [--compile auto]

Edits replayed from a repository's git history, as lsp.context_bench builds them (each
hunk's last added line cut out, the file as it was at that moment, the commit's other files
open). Each task is completed twice in the same run, greedy, with prompt lookup off and on,
the same prompt and KV-cache state: once as the editor gets it (post-processed, the line or
block), once raw (48 tokens, post-processing off, which is where drafting has room). Printed:
decode tokens/s both ways and their ratio, the drafts' acceptance rate, and how many outputs
were identical (they must all be); for all the edits, for those where lookup applies (most of
the completion repeats text of the prompt) and for the others. The decode step is the server's
(`--compile auto`: on CPU the C step where it runs the model and measures faster), so drafts are
checked as served.
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

APPLIES = 0.5
"""An edit where lookup applies: at least this fraction of its completion was drafted from the
prompt and kept. (Drafts depend only on the tokens, which are the same with lookup off and on, so
this sorts the edits by what they are, not by how fast they ran.)"""


@dataclasses.dataclass
class Run:
    tokens: int = 0
    decode_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    text: str = ""

    def add(self, other: Run) -> None:
        self.tokens, self.decode_s = self.tokens + other.tokens, self.decode_s + other.decode_s
        self.drafted, self.accepted = self.drafted + other.drafted, self.accepted + other.accepted


def measure(pipeline: Pipeline, tasks: list[Task], settings: CompletionSettings, raw: bool) -> list[dict[bool, Run]]:
    """Each task completed with lookup off and on: {False: off, True: on} per task."""
    runs = []
    for task in tasks:
        snap = Snapshot(task.line.text, len(task.line.prefix), "python" if task.path.endswith(".py") else "",
                        task.open_files)  # fmt: skip
        pair = {}
        for lookup in (False, True):  # same prompt, same cache state: the first of the two warms it
            pipeline.engine.reset_cache()
            done = pipeline.complete(snap, settings, raw=raw, sampling={"prompt_lookup": lookup})
            s = done.stats
            pair[lookup] = Run(s.generated_tokens, s.decode_s, s.drafted_tokens, s.accepted_tokens, done.raw)
        runs.append(pair)
    return runs


def applies(pair: dict[bool, Run]) -> bool:
    on = pair[True]
    return on.tokens > 0 and on.accepted >= APPLIES * on.tokens


def table_rows(label: str, runs: list[dict[bool, Run]]) -> list[str]:
    """Off and on, summed over the runs: tokens/s, their ratio, drafts kept, identical outputs."""
    if not runs:
        return [f"| {label} | 0 edits | - | - | - | - | - | - |"]
    totals = {lookup: Run() for lookup in (False, True)}
    for pair in runs:
        for lookup, run in pair.items():
            totals[lookup].add(run)
    rate = {lookup: t.tokens / t.decode_s if t.decode_s else 0.0 for lookup, t in totals.items()}
    same = sum(pair[False].text == pair[True].text for pair in runs)
    rows = []
    for lookup, t in totals.items():
        kept = f"{100 * t.accepted / t.drafted:.0f}% of {t.drafted}" if t.drafted else "-"
        ratio = rate[lookup] / rate[False] if rate[False] else 0.0
        rows.append(f"| {label} | {len(runs)} | {'on' if lookup else 'off'} | {t.tokens} | {rate[lookup]:.0f} | "
                    f"{ratio:.2f}x | {kept} | {same}/{len(runs)} |")  # fmt: skip
    return rows


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
    print("| completions | edits | lookup | tokens | decode tokens/s | vs off | drafts kept | identical to off |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, settings, raw in (("as shown (post-processed)", shown, False),
                                 ("raw, 48 tokens", dataclasses.replace(shown, max_tokens=48), True)):  # fmt: skip
        runs = measure(pipeline, tasks, settings, raw)
        for part, chosen in (("all", runs), ("where it applies", [r for r in runs if applies(r)]),
                             ("where it does not", [r for r in runs if not applies(r)])):  # fmt: skip
            print("\n".join(table_rows(f"{label}: {part}", chosen)))
    print(f"\n(lookup applies to an edit when at least {APPLIES:.0%} of its completion was drafted and kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
