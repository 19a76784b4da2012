"""`prepare` against what a real repository can hold: credentials of every common kind, a
folder swapped for a symlink out of the repository, file names that are not UTF-8, NUL
bytes deep in a file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from training.filters import FilterOptions
from training.prepare import PrepareOptions, prepare_corpus
from training.secrets import REDACTED
from training.secrets_bench import look_alikes, planted
from training.shards import iter_records

CLEAN = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_repo(root: Path, files: dict[str, str]) -> Path:
    for i, (name, text) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # A line of its own per file, so no two are near-duplicates of each other.
        path.write_text(f"# module {i}: {name}\n{CLEAN.replace('add', f'add{i}')}{text}", encoding="utf-8")
    git(root, "init", "-q")
    git(root, "add", "-A")
    return root


def options(**kw) -> PrepareOptions:
    extra = (".cfg", ".json", ".yaml", ".yml", ".md")
    return PrepareOptions(filters=FilterOptions(extra_extensions=extra), valid_fraction=0.0, **kw)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def kept_texts(out: Path) -> dict[str, str]:
    return {r["path"]: r["text"] for r in iter_records(out, "train")}


@pytest.fixture(scope="module")
def secrets_repo(tmp_path_factory) -> Path:
    kinds = planted(seed=3)
    files = {f"{i:02d}_{file}": text for i, (file, text) in enumerate(kinds.values())}
    files |= {f"ok_{file}": text for file, text in look_alikes().values()}
    return make_repo(tmp_path_factory.mktemp("secrets"), files)


def test_every_planted_kind_of_credential_is_dropped_naming_its_rule(secrets_repo, tmp_path):
    prepare_corpus([str(secrets_repo)], [], tmp_path / "out", options())
    skipped = {e["path"].split("/", 1)[1]: e for e in manifest(tmp_path / "out")["skipped_files"]}
    planted_names = [n for n in os.listdir(secrets_repo) if n[:2].isdigit()]
    assert len(planted_names) == len(planted()) >= 24
    for name in planted_names:
        assert skipped.get(name, {}).get("reason") == "secret", (name, skipped.get(name))
        assert " at line " in skipped[name]["detail"]  # which rule fired, and where
    kept = kept_texts(tmp_path / "out")
    assert sorted(p.split("/", 1)[1] for p in kept) == sorted(f"ok_{file}" for file, _ in look_alikes().values())


def test_redact_keeps_the_file_without_the_credential(secrets_repo, tmp_path):
    prepare_corpus([str(secrets_repo)], [], tmp_path / "out", options(secrets="redact"))
    kept = kept_texts(tmp_path / "out")
    redacted = manifest(tmp_path / "out")["redacted_files"]
    assert len(redacted) == len(planted(seed=3))
    for kind, (file, text) in planted(seed=3).items():
        [shard_text] = [t for p, t in kept.items() if p.endswith("_" + file)]
        assert REDACTED in shard_text and "def add" in shard_text, kind
        # No long random run of the planted text survives.
        for token in text.replace("'", " ").replace('"', " ").split():
            if len(token) >= 16 and any(c.isdigit() for c in token):
                assert token not in shard_text, (kind, token)


def test_a_folder_swapped_for_a_symlink_out_of_the_repository_is_not_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mod.py").write_text("SECRET_PLAN = 1\n" + CLEAN, encoding="utf-8")
    repo = make_repo(tmp_path / "repo", {"pkg/mod.py": "", "main.py": "print(1)\n"})
    (repo / "pkg" / "mod.py").unlink()
    (repo / "pkg").rmdir()
    (repo / "pkg").symlink_to(outside, target_is_directory=True)
    prepare_corpus([str(repo)], [], tmp_path / "out", options())
    texts = kept_texts(tmp_path / "out")
    assert not any("SECRET_PLAN" in t for t in texts.values())
    [entry] = [e for e in manifest(tmp_path / "out")["skipped_files"] if e["path"].endswith("pkg/mod.py")]
    assert entry["reason"] == "outside-repository" and str(outside) in entry["detail"]


def test_a_file_name_that_is_not_utf8_and_nul_bytes_deep_in_a_file(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    os.makedirs(repo, exist_ok=True)
    with open(os.path.join(os.fsencode(repo), b"caf\xff.py"), "w", encoding="utf-8") as f:
        f.write(CLEAN)
    (repo / "blob.py").write_bytes(CLEAN.encode() * 200 + b"\0" + CLEAN.encode())  # NUL past the first 8 KB
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    report = prepare_corpus([str(repo)], [], tmp_path / "out", options())
    data = manifest(tmp_path / "out")  # written: the odd name did not stop prepare
    assert any(f["path"] == "repo/caf\\xff.py" for f in data["files"])
    assert report.kept["train"] == 1
    [blob] = [e for e in data["skipped_files"] if e["path"].endswith("blob.py")]
    assert blob["reason"] == "binary" and f"offset {len(CLEAN) * 200}" in blob["detail"]
