"""The infilling benchmark: scoring, the sandbox, repository lines, and the command end to end."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest
from tqdm import tqdm

from training.evaluation.cli import main
from training.evaluation.completers import BaselineCompleter, Generated, StopRule
from training.evaluation.evaluate import evaluate_humaneval
from training.evaluation.humaneval import (
    BenchmarkDataError,
    InfillTask,
    check_program,
    evenly_spaced,
    load_tasks,
    problem_fingerprints,
)
from training.evaluation.repo_lines import line_matches, sample_line_tasks
from training.evaluation.sandbox import Limits, ProgramRunner, run_program

SAMPLE = 16  # tasks per benchmark: evenly spread over the 164 problems


class FixedCompleter:
    """Returns a prepared middle for each task (by its prefix)."""

    name = "fixed"

    def __init__(self, middles: dict[str, str]) -> None:
        self.middles = middles

    def complete(self, prefix: str, suffix: str, fmt: str, rule: StopRule) -> Generated:
        return Generated(self.middles[prefix])


def score(tasks: list[InfillTask], completer, limits: Limits | None = None) -> list:
    with ProgramRunner(workers=4, limits=limits or Limits()) as runner, tqdm(disable=True) as bar:
        return evaluate_humaneval(tasks, "single", "psm", completer, StopRule(8, True), runner, bar)


def indentation_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def test_benchmark_files_ship_with_the_package():
    assert len(load_tasks("single")) == 1033
    assert len(load_tasks("multi")) == 5815
    assert len(problem_fingerprints()) == 164
    assert all(f.signature.startswith("def ") and f.docstring for f in problem_fingerprints())


@pytest.mark.parametrize("benchmark", ["single", "multi"])
def test_canonical_solutions_pass_and_empty_middles_fail(benchmark):
    tasks = evenly_spaced(load_tasks(benchmark), SAMPLE)
    assert len({t.problem for t in tasks}) == SAMPLE
    canonical = score(tasks, FixedCompleter({t.prompt: t.canonical_solution for t in tasks}))
    assert [r.status for r in canonical] == ["passed"] * SAMPLE
    empty = score(tasks, BaselineCompleter("empty"))
    # A few deleted lines are redundant (the full sets: about 3% single-line, 0% multi-line).
    assert sum(r.passed for r in empty) <= 1
    assert all(r.status != "passed" for r in empty if not r.passed)


def test_a_hanging_or_exiting_completion_fails_and_the_run_goes_on():
    task = load_tasks("single")[0]
    indent = indentation_of(task.canonical_solution)
    # Each bad statement goes before the right line, so the program is valid Python.
    bad = {
        "loop": "while True: pass",
        "exit": "import os; os._exit(0)",
        "sys.exit": "import sys; sys.exit(0)",
        "memory": "x = bytearray(8 << 30)",
        "crash": "import os; os.abort()",
    }
    variants = {name: indent + line + "\n" + task.canonical_solution for name, line in bad.items()}
    variants["good"] = task.canonical_solution
    # The same problem several times, each with another prefix key for the fixed completer.
    tasks = [
        InfillTask(f"t/{name}", f"# {name}\n" + task.prompt, task.suffix, "", task.test, task.entry_point)
        for name in variants
    ]
    completer = FixedCompleter({t.prompt: variants[t.task_id[2:]] for t in tasks})
    results = {r.task_id[2:]: r for r in score(tasks, completer, Limits(timeout_s=1.0, startup_s=1.0))}
    assert results["good"].passed
    assert not any(results[name].passed for name in variants if name != "good")
    assert results["loop"].status in ("killed by SIGXCPU", "timed out")
    assert results["exit"].status == "exited without finishing"
    assert results["memory"].status == "failed: MemoryError"
    assert results["crash"].status == "killed by SIGABRT"


def test_the_program_runs_in_its_own_directory_and_process():
    probe = "import os, sys\nassert os.getpid() != {pid}\nassert os.getcwd() != {cwd!r}\nassert sys.flags.isolated\n"
    import os

    assert run_program(probe.format(pid=os.getpid(), cwd=os.getcwd())).passed
    assert not run_program("assert False").passed


def test_check_program_follows_the_reference_layout():
    task = InfillTask("x", "def f():\n", "    return 1\n", "", "def check(c):\n    assert c() == 1\n", "f")
    assert check_program(task, "") == "def f():\n    return 1\n\ndef check(c):\n    assert c() == 1\n\ncheck(f)"
    assert run_program(check_program(task, "")).passed


def test_single_line_rule_keeps_one_line_with_its_newline():
    rule = StopRule(16, single_line=True)
    assert rule.params().stop == ("\n",)
    assert rule.finish("    return x") == "    return x\n"
    assert rule.finish("a\nb") == "a\n"
    assert StopRule(16, single_line=False).finish("a\nb") == "a\nb"


def test_bad_benchmark_file_is_reported_with_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    good = {"task_id": "a", "prompt": "", "suffix": "", "canonical_solution": "", "test": "", "entry_point": "f"}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(good) + "\n" + json.dumps({**good, "test": 3}) + "\n")
    with pytest.raises(BenchmarkDataError, match=r"bad\.jsonl\.gz:2: field 'test'"):
        load_tasks("single", path)


def test_evenly_spaced_is_deterministic_and_spread():
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6]
    assert evenly_spaced(list(range(3)), 5) == [0, 1, 2]


def git_repo(root: Path, files: dict[str, str], untracked: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in {**files, **untracked}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", *files], check=True)
    return root


def test_repo_lines_are_tracked_nonblank_and_reproducible(tmp_path):
    text = "import os\n\ndef f():\n    x = 1\n    x = 1\n\n    return x\n"
    repo = git_repo(tmp_path / "repo", {"a.py": text, "notes.txt": "prose\n"}, {"b.py": "secret = 1\n"})
    tasks = sample_line_tasks(repo, 100, seed=1)
    assert [t.task_id for t in tasks] == ["a.py:1", "a.py:3", "a.py:4", "a.py:5", "a.py:7"]
    for t in tasks:
        assert t.prefix + t.line + "\n" + t.suffix == text
    assert sample_line_tasks(repo, 2, seed=5) == sample_line_tasks(repo, 2, seed=5)
    repeat = BaselineCompleter("repeat-line")
    matched = [t.task_id for t in tasks if line_matches(repeat.complete(t.prefix, t.suffix, "psm", None).completion, t)]
    assert matched == ["a.py:5"]


def test_tiny_model_eval_runs_end_to_end(tiny_checkpoint, tmp_path, capsys):
    repo = git_repo(tmp_path / "repo", {"m.py": "def add(a, b):\n    return a + b\n"}, {})
    out = tmp_path / "eval.json"
    argv = ["--model", str(tiny_checkpoint), "--limit", "2", "--tasks", "single,multi,repo", "--repo", str(repo)]
    argv += ["--max-new-tokens-single", "12", "--max-new-tokens-multi", "12", "--out", str(out), "--workers", "2"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    cells = {(s["benchmark"], s["fmt"]): s for s in report["scores"]}
    assert set(cells) == {(b, f) for b in ("single", "multi", "repo") for f in ("psm", "spm")}
    assert all(s["tasks"] == 2 and 0 <= s["passed"] <= 2 for s in cells.values())
    assert cells[("single", "spm")]["published_code_llama_7b"] == 83.3
    assert all(t["status"] for t in report["tasks"])
    assert all(
        t["completion"].endswith("\n") and t["completion"].count("\n") == 1
        for t in report["tasks"]
        if t["benchmark"] == "single"
    )
    assert sum(s["generated_tokens"] for s in cells.values()) > 0
    table = capsys.readouterr().out
    assert "single-line" in table and "83.3" in table and "repo lines" in table


def test_cli_reports_bad_arguments_clearly(capsys, tmp_path):
    assert main(["--baseline", "empty", "--tasks", "repo"]) == 2
    assert "--tasks repo needs --repo" in capsys.readouterr().err
    assert main(["--baseline", "empty", "--tasks", "repo", "--repo", str(tmp_path)]) == 2
    assert "not a git repository" in capsys.readouterr().err


def test_repo_tasks_get_the_servers_prompt_with_neighbouring_files(tmp_path, tiny_checkpoint):
    """The benchmark measures the prompt users get: the server's budgets and snippets of other files."""
    from engine.checkpoints import load_model
    from engine.options import CompletionSettings
    from engine.pipeline import Snapshot
    from engine.session import InfillEngine
    from training.evaluation.completers import ModelCompleter

    files = {"pkg/a.py": "def alpha():\n    return 1\n", "pkg/b.py": "def beta():\n    return alpha()\n"}
    repo = git_repo(tmp_path / "repo", files, {})
    tasks = sample_line_tasks(repo, 10, seed=0)
    task = next(t for t in tasks if t.task_id.startswith("pkg/b.py"))
    assert [s.path for s in task.sources] == ["pkg/a.py"]
    model, tokenizer, _ = load_model(tiny_checkpoint, "cpu")
    completer = ModelCompleter(InfillEngine(model, tokenizer))
    plan = completer.pipeline.plan(Snapshot(task.text, len(task.prefix), "python", task.sources), CompletionSettings())
    assert "# Path: pkg/a.py" in plan.parts.context and plan.parts.prefix.endswith(task.prefix)
    generated = completer.complete_line(task, "spm", StopRule(8, single_line=True))
    assert "\n" not in generated.completion  # post-processed: one line, as the editor shows it
