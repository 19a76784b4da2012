"""The corpus builder, offline: a fake standard library, fake wheels and a fake npm tarball."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from training.corpus import (
    NpmPackage,
    PypiPackage,
    build_corpus,
    is_permissive,
    main,
    pypi_licence,
)
from training.evaluation.humaneval import load_tasks
from training.sources import SourceError

CLEAN = "import os\n\n\ndef join(*parts):\n    return os.path.join(*parts)\n"


def original_prompts() -> dict[str, str]:
    """Each HumanEval problem's original prompt: the prefix of a task masking its first body line."""
    prompts: dict[str, str] = {}
    for task in load_tasks("multi"):
        if task.task_id.rsplit("/", 1)[-1].startswith("L0_"):
            prompts.setdefault(task.problem, task.prompt)
    return prompts


def solution(problem: str) -> str:
    return next(t.canonical_solution + t.suffix for t in load_tasks("multi") if t.problem == problem)


def flat(text: str) -> str:
    return " ".join(text.split())


def write_wheel(path: Path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def write_tarball(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path]:
    prompts = original_prompts()
    stdlib = tmp_path / "stdlib"
    (stdlib / "test").mkdir(parents=True)
    (stdlib / "pkg").mkdir()
    (stdlib / "LICENSE.txt").write_text("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n")
    (stdlib / "paths.py").write_text(CLEAN)  # kept: sorts before its copy
    (stdlib / "same_as_paths.py").write_text(CLEAN)
    (stdlib / "test" / "test_paths.py").write_text("def test_join():\n    assert True\n")
    (stdlib / "broken.py").write_text("def broken(:\n    pass\n")
    (stdlib / "verbatim.py").write_text(prompts["HumanEval/0"] + solution("HumanEval/0"))
    # Re-indented inside a class, with Windows line endings: still the same problem.
    indented = "".join("    " + line for line in (prompts["HumanEval/2"] + solution("HumanEval/2")).splitlines(True))
    (stdlib / "pkg" / "indented.py").write_bytes(("class Holder:\n" + indented).replace("\n", "\r\n").encode())

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    metadata = "Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{licence}\n\nA package.\n"
    write_wheel(
        downloads / "fake_pkg-1.0-py3-none-any.whl",
        {
            "fake_pkg/__init__.py": "from fake_pkg.core import add\n",
            "fake_pkg/core.py": "def add(a, b):\n    return a + b\n",
            "fake_pkg/contaminated.py": prompts["HumanEval/12"] + solution("HumanEval/12"),
            "fake_pkg/tests/test_core.py": "def test_add():\n    assert 1 + 1 == 2\n",
            "fake_pkg-1.0.dist-info/METADATA": metadata.format(
                name="fake-pkg", version="1.0", licence="License-Expression: MIT"
            ),
            "fake_pkg-1.0.dist-info/licenses/LICENSE": "MIT License\n",
        },
    )
    write_wheel(
        downloads / "copyleft-2.0-py3-none-any.whl",
        {
            "copyleft/mod.py": "VALUE = 1\n",
            "copyleft-2.0.dist-info/METADATA": metadata.format(
                name="copyleft", version="2.0", licence="License: GPL-3.0-only"
            ),
        },
    )
    write_tarball(
        downloads / "fake-js-1.0.0.tgz",
        {
            "package/package.json": json.dumps({"name": "fake-js", "license": "MIT"}),
            "package/LICENSE": "MIT License\n",
            "package/lib/index.js": "export function add(a, b) {\n  return a + b;\n}\n",
            "package/dist/bundle.min.js": "export function add(a,b){return a+b}\n",
            "package/../../escape.js": "export const escaped = true;\n",
        },
    )
    return stdlib, downloads


PYPI = (PypiPackage("fake-pkg", "1.0"), PypiPackage("copyleft", "2.0"))
NPM = (NpmPackage("fake-js", "1.0.0", ("lib/",)),)


def corpus_files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): p.read_text(encoding="utf-8")
        for p in out.rglob("*")
        if p.is_file() and "LICENSES" not in p.parts and p.name != "MANIFEST.json"
    }


def test_no_humaneval_prompt_survives_and_clean_code_does(sources, tmp_path):
    stdlib, downloads = sources
    out = tmp_path / "corpus"
    manifest = build_corpus(out, stdlib, PYPI, NPM, downloads, offline=True)
    files = corpus_files(out)

    # An oracle independent of the filter's fingerprints: no whole HumanEval prompt appears.
    flat_files = [flat(text) for text in files.values()]
    for problem, prompt in original_prompts().items():
        assert not any(flat(prompt) in text for text in flat_files), problem
    assert manifest["humaneval_dropped"] == 3
    assert {f["problem"] for f in manifest["humaneval_dropped_files"]} == {"HumanEval/0", "HumanEval/2", "HumanEval/12"}

    assert sorted(files) == [
        "npm/fake-js-1.0.0/lib/index.js",
        "pypi/fake-pkg-1.0/fake_pkg/__init__.py",
        "pypi/fake-pkg-1.0/fake_pkg/core.py",
        "python-stdlib/cpython-" + manifest["python"] + "/paths.py",
    ]
    assert manifest["dropped"] == {"HumanEval problem": 3, "duplicate": 1, "Python that does not parse": 1}
    assert manifest["totals"]["files"] == 4
    assert manifest["totals"]["bytes"] == sum(len(t.encode()) for t in files.values())


def test_manifest_records_licences_from_package_metadata(sources, tmp_path):
    stdlib, downloads = sources
    out = tmp_path / "corpus"
    manifest = build_corpus(out, stdlib, PYPI, NPM, downloads, offline=True)
    records = {r["name"]: r for r in manifest["sources"]}
    assert set(records) == {"cpython", "fake-pkg", "fake-js"}
    assert records["fake-pkg"]["licence"] == "MIT"
    assert records["fake-pkg"]["licence_from"] == "License-Expression"
    assert records["fake-pkg"]["files"] == 2
    assert records["fake-pkg"]["version"] == "1.0"
    assert len(records["fake-pkg"]["sha256"]) == 64
    assert records["fake-js"]["licence"] == "MIT"
    assert records["cpython"]["licence"] == "PSF-2.0"
    assert manifest["rejected"] == [{"source": "pypi", "name": "copyleft", "version": "2.0", "licence": "GPL-3.0-only"}]
    assert (out / "LICENSES" / "pypi-fake-pkg-1.0" / "licenses__LICENSE").read_text() == "MIT License\n"
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest


def test_offline_build_names_a_missing_archive(sources, tmp_path):
    _, downloads = sources
    with pytest.raises(SourceError, match=r"absent==9\.9: no pure-Python wheel"):
        build_corpus(tmp_path / "out", None, (PypiPackage("absent", "9.9"),), (), downloads, offline=True)


def test_command_builds_a_stdlib_only_corpus_and_refuses_a_full_folder(sources, tmp_path, capsys):
    stdlib, _ = sources
    out = tmp_path / "out"
    assert main(["--out", str(out), "--stdlib", str(stdlib), "--no-pypi", "--no-npm"]) == 0
    assert json.loads((out / "MANIFEST.json").read_text())["totals"]["files"] == 1
    assert "dropped 2 files containing HumanEval problems" in capsys.readouterr().out
    assert main(["--out", str(out), "--stdlib", str(stdlib), "--no-pypi", "--no-npm"]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (
            "Name: a\nLicense-Expression: Apache-2.0 OR BSD-2-Clause\n",
            ("Apache-2.0 OR BSD-2-Clause", "License-Expression"),
        ),
        ("Name: a\nLicense: Apache 2.0 License\n", ("Apache-2.0", "License")),
        ("Name: a\nClassifier: License :: OSI Approved :: BSD License\n", ("BSD", "Classifier")),
        ("Name: a\n", ("unknown", "License")),
    ],
)
def test_licence_is_read_from_wheel_metadata(metadata, expected):
    assert pypi_licence(metadata + "\nLicense: GPL in the description does not count\n") == expected


def test_permissive_licence_expressions():
    assert is_permissive("MIT")
    assert is_permissive("Apache-2.0 OR BSD-2-Clause")
    assert is_permissive("(MIT OR GPL-3.0-only)")
    assert not is_permissive("GPL-3.0-only")
    assert not is_permissive("MIT AND GPL-2.0-only")
    assert not is_permissive("unknown")
