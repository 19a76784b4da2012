"""The `corpus` command: the default model's training corpus, from what a fresh machine can get.

Sources, in this order (the order decides which copy of a duplicate is kept):

1. The Python standard library's source, from the running interpreter's lib directory
   (PSF licence). Test suites (test/, tests/, idle_test/) are left out: they are dominated
   by assertion tables, deliberately broken files and encoding torture tests.
2. `PYPI_PACKAGES`: popular pure-Python, permissively licensed packages at pinned versions.
   `pip download --no-deps --only-binary=:all: --platform any` fetches each one's pure-Python
   wheel (the same file on every machine); the licence is read from the wheel's own
   metadata (License-Expression, else License, else the licence classifiers) and a package
   whose licence is not on the permissive list is rejected, not unpacked. Only .py files.
3. `NPM_PACKAGES`: JavaScript/TypeScript packages at pinned versions, fetched with
   `npm pack`; licence from the tarball's package.json. Only the hand-written sources under
   each package's listed roots (src/, lib/...), not its built bundles; no .d.ts files.

Every file then passes the filters in `drop_reason` (training.filters' size, binary, UTF-8,
line-length, alphanumeric-fraction and generated-header checks, then a generator's note in
the first five lines and Python that does not parse) and exact-duplicate removal.
Vendored copies (_vendor/, vendor/, node_modules/) are skipped.

HumanEval is kept out: a file that contains any HumanEval problem's entry-point `def` line
and its docstring (whitespace-normalised, so re-indented copies are caught too) is dropped
and counted. DIR/MANIFEST.json records every source with version, licence, where the licence
was read, archive sha256, file count and bytes; licence texts are copied to DIR/LICENSES/.

Network use is limited to those pip and npm downloads (--offline uses only --download-dir).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from training.evaluation.humaneval import ProblemFingerprint, problem_fingerprints
from training.filters import FilterOptions, check_text, decode_source
from training.sources import SourceError


@dataclass(frozen=True)
class PypiPackage:
    name: str
    version: str


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    roots: tuple[str, ...]
    """Path prefixes inside the package that hold its hand-written source."""
    exclude: tuple[str, ...] = ()
    """Path prefixes to leave out even under a root."""


# Pinned so the corpus is reproducible. Licences are not listed here on purpose: they are
# read from each downloaded package (see `pypi_licence`).
PYPI_PACKAGES = tuple(
    PypiPackage(name, version)
    for name, version in [
        ("requests", "2.34.2"), ("urllib3", "2.8.0"), ("idna", "3.20"), ("flask", "3.1.3"),
        ("werkzeug", "3.1.9"), ("jinja2", "3.1.6"), ("click", "8.5.1"), ("itsdangerous", "2.2.0"),
        ("django", "5.2.19"), ("attrs", "26.1.0"), ("fastapi", "0.165.0"), ("starlette", "1.10.0"),
        ("httpx", "0.28.1"), ("httpcore", "1.0.9"), ("anyio", "4.16.0"), ("h11", "0.16.0"),
        ("rich", "15.0.0"), ("typer", "0.29.2"), ("pygments", "2.21.0"), ("sphinx", "9.0.4"),
        ("black", "26.10.1"), ("isort", "9.0.2"), ("pyflakes", "4.1.0"), ("pycodestyle", "2.15.0"),
        ("flake8", "7.5.0"), ("jedi", "0.20.1"), ("parso", "0.8.7"), ("pytest", "9.2.0"),
        ("pluggy", "1.7.0"), ("packaging", "26.3"), ("setuptools", "84.2.1"), ("pip", "26.3"),
        ("wheel", "0.48.0"), ("tomli", "2.5.0"), ("six", "1.17.0"), ("python-dateutil", "4.0.0"),
        ("pytz", "2026.6"), ("arrow", "1.4.0"), ("sqlalchemy", "2.1.9"), ("alembic", "1.20.1"),
        ("networkx", "3.6.1"), ("sympy", "1.14.0"), ("boto3", "1.44.5"), ("botocore", "1.44.5"),
        ("twisted", "26.10.0"), ("scrapy", "2.19.0"), ("beautifulsoup4", "4.15.0"), ("marshmallow", "4.4.0"),
        ("more-itertools", "11.2.1"), ("toolz", "1.2.0"), ("cachetools", "8.0.1"), ("ipython", "9.18.1"),
        ("traitlets", "5.16.1"), ("prompt-toolkit", "3.0.53"), ("mako", "1.4.3"), ("celery", "5.7.0"),
        ("kombu", "5.7.0"), ("gunicorn", "27.0.1"), ("pydantic", "2.14.3"), ("mypy", "2.4.1"),
    ]
)  # fmt: skip
NPM_PACKAGES = (
    NpmPackage("lodash", "4.18.1", ("",), ("lodash.js", "core.js", "fp/", "fp.js")),
    NpmPackage("express", "5.3.0", ("lib/", "index.js")),
    NpmPackage("axios", "1.21.1", ("lib/",)),
    NpmPackage("commander", "14.0.3", ("lib/", "index.js")),
    NpmPackage("chalk", "5.6.2", ("source/",)),
    NpmPackage("debug", "4.4.3", ("src/",)),
    NpmPackage("jquery", "4.0.0", ("src/",)),
    NpmPackage("moment", "2.31.0", ("src/",)),
    NpmPackage("eslint", "10.15.0", ("lib/",)),
    NpmPackage("webpack", "5.112.2", ("lib/",)),
    NpmPackage("three", "0.187.0", ("src/",)),
    NpmPackage("preact", "11.2.0", ("src/", "hooks/src/", "compat/src/")),
    NpmPackage("svelte", "5.57.3", ("src/",)),
    NpmPackage("rxjs", "7.8.2", ("src/",)),
    NpmPackage("zod", "4.6.7", ("src/",)),
    NpmPackage("immer", "11.2.10", ("src/",)),
    NpmPackage("redux", "5.0.1", ("src/",)),
    NpmPackage("@reduxjs/toolkit", "2.14.0", ("src/",)),
    NpmPackage("mobx", "7.1.3", ("src/",)),
    NpmPackage("@tanstack/query-core", "5.108.0", ("src/",)),
    NpmPackage("effect", "4.1.0", ("src/",)),
)

PERMISSIVE_LICENCES = frozenset(
    {"MIT", "BSD", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC", "0BSD", "PSF-2.0", "Unlicense"}
)
# Free-text License: fields and trove classifiers, mapped to SPDX ids.
LICENCE_NAMES = {
    "mit": "MIT",
    "mit license": "MIT",
    "bsd": "BSD",
    "bsd license": "BSD",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd 3-clause license": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "apache-2.0": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "isc": "ISC",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
}
PYTHON_EXTENSIONS = (".py",)
JS_EXTENSIONS = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".mts", ".cts")
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "_vendor", "vendor", "vendored"}
    | {"node_modules", "__tests__", "dist", "build"}
)
LICENCE_FILE = re.compile(r"^(licen[cs]e|copying|notice)", re.IGNORECASE)
GENERATED_MARKERS = ("auto-generated", "autogenerated", "automatically generated", "generated by", "do not edit")
# The Stack's quality limits (Kocetkov et al., 2022) are training.filters' own: one filter
# module for `prepare`, this command and the repository benchmark.
FILTERS = FilterOptions(max_bytes=1 << 20)


# ---- licences ----


def spdx_ids(expression: str) -> list[list[str]]:
    """An SPDX expression as alternatives (OR) of required licences (AND)."""
    cleaned = expression.replace("(", " ").replace(")", " ")
    return [
        [part.strip() for part in re.split(r"\s+AND\s+", alternative) if part.strip()]
        for alternative in re.split(r"\s+OR\s+", cleaned)
    ]


def is_permissive(expression: str) -> bool:
    return any(
        alternative and all(re.sub(r"\s+WITH\s+.*", "", lic) in PERMISSIVE_LICENCES for lic in alternative)
        for alternative in spdx_ids(expression)
    )


def pypi_licence(metadata: str) -> tuple[str, str]:
    """(licence, the metadata field it came from) from a wheel's METADATA headers."""
    headers = metadata.split("\n\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for line in headers.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("License-Expression"):
        return fields["License-Expression"][0], "License-Expression"
    text = (fields.get("License") or [""])[0]
    if text.lower() in LICENCE_NAMES:
        return LICENCE_NAMES[text.lower()], "License"
    classified = sorted(
        {
            LICENCE_NAMES.get(c.split("::")[-1].strip().lower(), c.split("::")[-1].strip())
            for c in fields.get("Classifier", [])
            if c.startswith("License ::")
        }
    )
    if classified:
        return " OR ".join(classified), "Classifier"
    return text or "unknown", "License"


def npm_licence(package_json: dict) -> tuple[str, str]:
    value = package_json.get("license")
    if isinstance(value, dict):
        value = value.get("type")
    if not value and isinstance(package_json.get("licenses"), list):
        value = " OR ".join(str(item.get("type")) for item in package_json["licenses"] if isinstance(item, dict))
    return (str(value) if value else "unknown"), "package.json license"


# ---- file filters ----


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def function_name(signature: str) -> str:
    return signature.removeprefix("def ").split("(")[0].strip()


class HumanEvalFilter:
    """Finds HumanEval problems in a file: the entry point's def line and docstring."""

    def __init__(self, fingerprints: tuple[ProblemFingerprint, ...]) -> None:
        # (problem, function name, normalised def line, normalised docstring)
        self.needles = [
            (
                f.problem,
                function_name(f.signature),
                normalise_whitespace(f.signature),
                normalise_whitespace(f.docstring),
            )
            for f in fingerprints
        ]

    def find(self, text: str) -> str | None:
        flat = None
        for problem, name, signature, docstring in self.needles:
            if name in text:  # cheap test first; normalise only files that mention a HumanEval name
                flat = flat if flat is not None else normalise_whitespace(text)
                if signature in flat and docstring in flat:
                    return problem
        return None


def python_parses(text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like
        try:
            ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


def drop_reason(data: bytes, path: str) -> str | None:
    """Why a file does not belong in the corpus, or None to keep it: training.filters' checks
    (size, binary, UTF-8, empty, generated, minified or data), then this command's stricter
    ones for third-party code (a generator's note in the first lines, Python that does not parse)."""
    if len(data) > FILTERS.max_bytes:
        return f"over {FILTERS.max_bytes:,} bytes"
    text, why = decode_source(data)
    why = why or check_text(text, FILTERS)
    if why:
        return why.reason  # counted per reason in the manifest: no per-file detail
    head = "\n".join(text.splitlines()[:5]).lower()
    if any(marker in head for marker in GENERATED_MARKERS):
        return "generated"
    if path.endswith(PYTHON_EXTENSIONS) and not python_parses(text):
        return "Python that does not parse"
    return None


def skipped_path(path: PurePosixPath) -> bool:
    return any(part in SKIPPED_DIRS for part in path.parts[:-1]) or path.name.endswith((".min.js", ".d.ts"))


# ---- the corpus being written ----


@dataclass
class SourceRecord:
    source: str
    """"python-stdlib", "pypi" or "npm"."""
    name: str
    version: str
    licence: str
    licence_from: str
    language: str
    archive: str = ""
    sha256: str = ""
    files: int = 0
    bytes: int = 0
    dropped: Counter = field(default_factory=Counter)


class CorpusWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.humaneval = HumanEvalFilter(problem_fingerprints())
        self.seen: set[bytes] = set()
        self.humaneval_files: list[dict] = []
        self.sources: list[SourceRecord] = []
        self.rejected: list[dict] = []

    def add_file(self, record: SourceRecord, relative: PurePosixPath, data: bytes) -> None:
        reason = drop_reason(data, relative.name)
        target = PurePosixPath(record.source) / f"{record.name}-{record.version}".replace("/", "__") / relative
        if reason is None:
            problem = self.humaneval.find(data.decode("utf-8"))
            if problem is not None:
                reason = "HumanEval problem"
                self.humaneval_files.append({"file": str(target), "problem": problem})
        if reason is None:
            digest = hashlib.sha256(data).digest()
            reason = "duplicate" if digest in self.seen else None
            self.seen.add(digest)
        if reason is not None:
            record.dropped[reason] += 1
            return
        path = self.out_dir / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.files += 1
        record.bytes += len(data)

    def add_licence_file(self, record: SourceRecord, name: str, data: bytes) -> None:
        folder = self.out_dir / "LICENSES" / f"{record.source}-{record.name}-{record.version}".replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / safe_name(name)).write_bytes(data)

    def manifest(self) -> dict:
        by_language: Counter = Counter()
        files_by_language: Counter = Counter()
        dropped: Counter = Counter()
        for record in self.sources:
            by_language[record.language] += record.bytes
            files_by_language[record.language] += record.files
            dropped.update(record.dropped)
        return {
            "python": sys.version.split()[0],
            "totals": {
                "files": sum(r.files for r in self.sources),
                "bytes": sum(r.bytes for r in self.sources),
                "files_by_language": dict(files_by_language),
                "bytes_by_language": dict(by_language),
            },
            "dropped": dict(dropped.most_common()),
            "humaneval_dropped": len(self.humaneval_files),
            "humaneval_dropped_files": self.humaneval_files,
            "licences": dict(Counter(r.licence for r in self.sources).most_common()),
            "sources": [{**vars(r), "dropped": dict(r.dropped)} for r in self.sources],
            "rejected": self.rejected,
        }


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip("/").replace("/", "__")) or "file"


def safe_relative(name: str) -> PurePosixPath | None:
    """An archive member's path if it stays inside the archive (no absolute or .. parts)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


# ---- sources ----


def default_stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def add_stdlib(writer: CorpusWriter, stdlib: Path) -> None:
    if not stdlib.is_dir():
        raise SourceError(f"{stdlib}: the standard library folder does not exist")
    licence_file = stdlib / "LICENSE.txt"
    found = licence_file.is_file() and "PYTHON SOFTWARE FOUNDATION LICENSE" in licence_file.read_text(errors="replace")
    record = SourceRecord(
        "python-stdlib",
        "cpython",
        sys.version.split()[0],
        "PSF-2.0",
        "LICENSE.txt beside the standard library" if found else "CPython's licence (no LICENSE.txt found)",
        "python",
    )
    if found:
        writer.add_licence_file(record, "LICENSE.txt", licence_file.read_bytes())
    for path in sorted(stdlib.rglob("*.py")):
        relative = PurePosixPath(path.relative_to(stdlib).as_posix())
        if not skipped_path(relative) and path.is_file() and not path.is_symlink():
            writer.add_file(record, relative, path.read_bytes())
    writer.sources.append(record)


def wheel_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def fetch_wheel(package: PypiPackage, download_dir: Path, offline: bool) -> Path:
    def find() -> Path | None:
        prefix = f"{wheel_name(package.name)}-{package.version}-"
        matches = [p for p in download_dir.glob("*.whl") if p.name.lower().startswith(prefix)]
        return sorted(matches)[0] if matches else None

    found = find()
    if found is None and not offline:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", "any"]
        command += [
            "--implementation",
            "py",
            "--quiet",
            "--dest",
            str(download_dir),
            f"{package.name}=={package.version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SourceError(f"pip download {package.name}=={package.version} failed: {done.stderr.strip()[-500:]}")
        found = find()
    if found is None:
        raise SourceError(f"{package.name}=={package.version}: no pure-Python wheel in {download_dir}")
    return found


def add_wheel(writer: CorpusWriter, package: PypiPackage, wheel: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise SourceError(f"{wheel}: not a readable wheel: {e}") from e
    with archive:
        names = archive.namelist()
        metadata = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if not metadata:
            raise SourceError(f"{wheel}: no .dist-info/METADATA")
        licence, licence_from = pypi_licence(archive.read(metadata[0]).decode("utf-8", errors="replace"))
        if not is_permissive(licence):
            writer.rejected.append(
                {"source": "pypi", "name": package.name, "version": package.version, "licence": licence}
            )
            print(f"corpus: skipping {package.name}=={package.version}: licence {licence!r} is not permissive")
            return
        record = SourceRecord("pypi", package.name, package.version, licence, licence_from, "python", wheel.name)
        record.sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
        for name in sorted(names):
            relative = safe_relative(name)
            if relative is None or name.endswith("/"):
                continue
            in_dist_info = relative.parts[0].endswith(".dist-info")
            if in_dist_info and LICENCE_FILE.match(relative.name):
                writer.add_licence_file(record, "/".join(relative.parts[1:]), archive.read(name))
            elif not in_dist_info and name.endswith(PYTHON_EXTENSIONS) and not skipped_path(relative):
                writer.add_file(record, relative, archive.read(name))
        writer.sources.append(record)


def npm_tarball_name(package: NpmPackage) -> str:
    return f"{package.name.removeprefix('@').replace('/', '-')}-{package.version}.tgz"


def fetch_tarball(package: NpmPackage, download_dir: Path, offline: bool) -> Path:
    tarball = download_dir / npm_tarball_name(package)
    if not tarball.is_file() and not offline:
        npm = shutil.which("npm")
        if npm is None:
            raise SourceError("npm is not installed; install Node.js or pass --no-npm")
        command = [npm, "pack", f"{package.name}@{package.version}", "--pack-destination", str(download_dir)]
        done = subprocess.run(command + ["--silent"], capture_output=True, text=True)
        if done.returncode != 0:
            raise SourceError(f"npm pack {package.name}@{package.version} failed: {done.stderr.strip()[-500:]}")
    if not tarball.is_file():
        raise SourceError(f"{package.name}@{package.version}: no {tarball.name} in {download_dir}")
    return tarball


def add_tarball(writer: CorpusWriter, package: NpmPackage, tarball: Path) -> None:
    try:
        archive = tarfile.open(tarball, "r:gz")
    except (tarfile.TarError, OSError) as e:
        raise SourceError(f"{tarball}: not a readable npm tarball: {e}") from e
    with archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        manifest = members.get("package/package.json")
        if manifest is None:
            raise SourceError(f"{tarball}: no package/package.json")
        try:
            package_json = json.load(io.BytesIO(archive.extractfile(manifest).read()))
        except json.JSONDecodeError as e:
            raise SourceError(f"{tarball}: package/package.json is not JSON: {e}") from e
        licence, licence_from = npm_licence(package_json)
        if not is_permissive(licence):
            writer.rejected.append(
                {"source": "npm", "name": package.name, "version": package.version, "licence": licence}
            )
            print(f"corpus: skipping {package.name}@{package.version}: licence {licence!r} is not permissive")
            return
        record = SourceRecord("npm", package.name, package.version, licence, licence_from, "javascript/typescript")
        record.archive, record.sha256 = tarball.name, hashlib.sha256(tarball.read_bytes()).hexdigest()
        for name in sorted(members):
            relative = safe_relative(name)
            if relative is None or relative.parts[0] != "package" or len(relative.parts) < 2:
                continue
            inner = PurePosixPath(*relative.parts[1:])
            text_path = inner.as_posix()
            if len(inner.parts) == 1 and LICENCE_FILE.match(inner.name):
                writer.add_licence_file(record, inner.name, archive.extractfile(members[name]).read())
                continue
            wanted = any(text_path == root or text_path.startswith(root) for root in package.roots if root) or (
                "" in package.roots and len(inner.parts) == 1
            )
            if (
                wanted
                and not any(text_path.startswith(prefix) for prefix in package.exclude)
                and inner.name.endswith(JS_EXTENSIONS)
                and not skipped_path(inner)
            ):
                writer.add_file(record, inner, archive.extractfile(members[name]).read())
        writer.sources.append(record)


# ---- the command ----


def build_corpus(
    out_dir: Path,
    stdlib: Path | None,
    pypi: tuple[PypiPackage, ...],
    npm: tuple[NpmPackage, ...],
    download_dir: Path,
    offline: bool = False,
) -> dict:
    """Write the corpus and its MANIFEST.json into out_dir (which must be empty or absent)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SourceError(f"{out_dir}: exists and is not empty; choose a new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    download_dir.mkdir(parents=True, exist_ok=True)
    writer = CorpusWriter(out_dir)
    if stdlib is not None:
        add_stdlib(writer, stdlib)
        report(writer.sources[-1])
    for package in pypi:
        add_wheel(writer, package, fetch_wheel(package, download_dir, offline))
        if writer.sources and writer.sources[-1].name == package.name:
            report(writer.sources[-1])
    for package in npm:
        add_tarball(writer, package, fetch_tarball(package, download_dir, offline))
        if writer.sources and writer.sources[-1].name == package.name:
            report(writer.sources[-1])
    manifest = writer.manifest()
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def report(record: SourceRecord) -> None:
    print(
        f"corpus: {record.source} {record.name} {record.version} ({record.licence}): "
        f"{record.files} files, {record.bytes / 1e6:.2f} MB, dropped {sum(record.dropped.values())}",
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="new folder for the corpus and MANIFEST.json")
    parser.add_argument("--download-dir", type=Path, help="keep (and reuse) downloaded archives here")
    parser.add_argument("--offline", action="store_true", help="download nothing: use only --download-dir")
    parser.add_argument("--stdlib", type=Path, help="standard library folder (default: this interpreter's)")
    parser.add_argument("--no-stdlib", action="store_true", help="leave out the standard library")
    parser.add_argument("--no-pypi", action="store_true", help="leave out the pinned PyPI packages")
    parser.add_argument("--no-npm", action="store_true", help="leave out the pinned npm packages")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "corpus",
        help="assemble the default model's training corpus (stdlib + pinned PyPI/npm packages)",
        description="Assemble the training corpus: the Python standard library, pinned permissively licensed "
        "PyPI and npm packages, quality-filtered, deduplicated, HumanEval removed.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.offline and args.download_dir is None and not (args.no_pypi and args.no_npm):
        print("corpus: error: --offline needs --download-dir with the archives", file=sys.stderr)
        return 2
    stdlib = None if args.no_stdlib else (args.stdlib or default_stdlib_dir())
    pypi = () if args.no_pypi else PYPI_PACKAGES
    npm = () if args.no_npm else NPM_PACKAGES
    try:
        with tempfile.TemporaryDirectory(prefix="corpus-downloads-") as scratch:
            manifest = build_corpus(args.out, stdlib, pypi, npm, args.download_dir or Path(scratch), args.offline)
    except (SourceError, OSError) as e:
        print(f"corpus: error: {e}", file=sys.stderr)
        return 2
    totals = manifest["totals"]
    print(
        f"corpus: {totals['files']} files, {totals['bytes'] / 1e6:.1f} MB in {args.out}; "
        f"dropped {manifest['humaneval_dropped']} files containing HumanEval problems; "
        f"licences {manifest['licences']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.corpus", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
