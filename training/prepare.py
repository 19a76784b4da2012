"""`codellama-train prepare`: a team's repositories (and plain folders) -> a filtered text corpus.

Every file meets the checks in order: git status (tracked only), vendored folder, secret
file name, language, generated name, inside the repository (no symlink out of it, at any
level of the path), size, readable, binary, UTF-8, empty, generated header,
minified/data, secret content, exact duplicate, near-duplicate. The first that fails is
the reason it is skipped; the report counts reasons and the manifest lists every skipped
path with what was found (for secrets: which rule, on which line). With `--secrets
redact` a file holding a credential is kept with the credential replaced by <REDACTED>.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.dedup import NearDuplicateIndex, content_hash
from training.filters import (
    DEFAULT_LANGUAGES,
    LANGUAGES,
    SECRET_SCANNERS,
    FilterOptions,
    Skip,
    check_path,
    check_text,
    decode_source,
    secret_findings,
)
from training.secrets import redact
from training.shards import MANIFEST, SPLITS, ShardWriter, write_manifest
from training.sources import SourceError, SourceFile, folder_files, git_files

CORPUS_FORMAT = "codellama-train-corpus"


@dataclass
class PrepareOptions:
    """What `prepare` keeps and how it splits (defaults match the command line)."""

    filters: FilterOptions = field(default_factory=FilterOptions)
    """Language, size, minified and secret thresholds."""
    near_duplicates: bool = True
    """Drop near-duplicates (MinHash); exact duplicates are always dropped."""
    near_threshold: float = 0.85
    """Estimated Jaccard similarity of 5-token shingle sets above which a file is a near-duplicate."""
    valid_fraction: float = 0.01
    """Share of documents held out for validation (chosen by content hash: stable across runs)."""
    shard_bytes: int = 64 * 2**20
    """Start a new shard file past this many bytes."""
    secrets: str = "drop"
    """A file holding a credential: "drop" it (the default) or "redact" the credential and keep the file."""
    secret_scanner: str = "builtin"
    """"builtin", "detect-secrets" (pip install detect-secrets) or "both"."""


@dataclass
class PrepareReport:
    kept: Counter = field(default_factory=Counter)
    """Documents per split."""
    kept_bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Files (or ignored folders) per skip reason."""
    skipped_files: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    redacted_files: list[dict] = field(default_factory=list)
    """Files kept with credentials replaced: path and what was found."""


def display_path(path: str) -> str:
    """A path as text that any JSON or terminal takes: bytes that are not UTF-8 (git and the
    file system allow them) shown as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_inside(path: Path, root: Path) -> bytes:
    """The file's bytes, refusing one that became a symlink, or moved outside root, since it was checked."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else path.resolve()
        if not real.is_relative_to(root.resolve()):
            raise OSError(f"{display_path(str(path))} resolves outside the repository")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def held_out(sha256: str, fraction: float) -> bool:
    return int(sha256[:8], 16) / 2**32 < fraction


def list_sources(repos: list[str], dirs: list[str]) -> list[SourceFile]:
    files: list[SourceFile] = []
    for repo in repos:
        files.extend(git_files(repo))
    for folder in dirs:
        files.extend(folder_files(folder))
    return files


def prepare_corpus(
    repos: list[str], dirs: list[str], out_dir: str | Path, options: PrepareOptions | None = None
) -> PrepareReport:
    """Filter and deduplicate the sources into shards + manifest under out_dir."""
    options = options or PrepareOptions()
    out_dir = Path(out_dir)
    if not repos and not dirs:
        raise SourceError("nothing to read: give at least one --repo or --dir")
    sources = list_sources(repos, dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    writers = {split: ShardWriter(out_dir, split, options.shard_bytes) for split in SPLITS}
    seen: dict[str, str] = {}
    near = NearDuplicateIndex(threshold=options.near_threshold) if options.near_duplicates else None

    def skip(source: SourceFile, why: Skip) -> None:
        report.skipped[why.reason] += 1
        report.skipped_files.append({"path": source.display, "reason": why.reason, "detail": why.detail})

    for source in sources:
        if source.skip:
            skip(source, Skip(source.skip))
            continue
        why = check_path(source.relpath, options.filters)
        if why:
            skip(source, why)
            continue
        path = source.path
        try:
            if path.is_symlink() or not path.is_file():
                skip(source, Skip("not-a-file", "symlink" if path.is_symlink() else "submodule or special file"))
                continue
            if not path.resolve().is_relative_to(source.root.resolve()):
                # A folder on the way replaced by a symlink: the file lives elsewhere.
                skip(source, Skip("outside-repository", f"resolves to {display_path(str(path.resolve()))}"))
                continue
            size = path.stat().st_size
            if size > options.filters.max_bytes:
                skip(source, Skip("too-large", f"{size} bytes"))
                continue
            data = read_inside(path, source.root)
        except OSError as e:
            skip(source, Skip("unreadable", e.strerror or str(e)))
            continue
        text, why = decode_source(data)
        why = why or check_text(text, options.filters)
        if why:
            skip(source, why)
            continue
        found = secret_findings(text, options.secret_scanner, source.relpath)
        if found:
            detail = "; ".join(f"{f.rule} at line {f.line}" for f in found[:5])
            if options.secrets != "redact":
                skip(source, Skip("secret", detail))
                continue
            text = redact(text, found)
            report.redacted_files.append({"path": source.display, "detail": detail})
        sha = content_hash(text)
        if sha in seen:
            skip(source, Skip("exact-duplicate", f"of {seen[sha]}"))
            continue
        seen[sha] = source.display
        original = near.add(source.display, text) if near else None
        if original:
            skip(source, Skip("near-duplicate", f"of {original}"))
            continue
        split = "valid" if held_out(sha, options.valid_fraction) else "train"
        writers[split].write({"text": text, "path": source.display, "sha256": sha})
        report.kept[split] += 1
        report.kept_bytes += len(data)
        report.files.append({"path": source.display, "split": split, "sha256": sha, "chars": len(text)})
    for writer in writers.values():
        writer.close()
    if report.kept["valid"] == 0 and report.kept["train"] >= 2 and options.valid_fraction > 0:
        writers = hold_out_lowest_hashes(out_dir, writers, report, options)

    manifest = {
        "format": CORPUS_FORMAT,
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": {"repos": [str(Path(r).resolve()) for r in repos], "dirs": [str(Path(d).resolve()) for d in dirs]},
        "options": {**asdict(options), "filters": {**asdict(options.filters), "suffixes": None}},
        "kept": {**{split: report.kept[split] for split in SPLITS}, "bytes": report.kept_bytes},
        "skipped": dict(sorted(report.skipped.items())),
        "shards": {split: writers[split].shards for split in SPLITS},
        # A fingerprint of the document list: a run can tell when its corpus changed under it.
        "fingerprint": hashlib.sha256("".join(f["sha256"] for f in report.files).encode()).hexdigest()[:16],
        "files": report.files,
        "skipped_files": report.skipped_files,
        "redacted_files": report.redacted_files,
    }
    write_manifest(out_dir, manifest)
    return report


def hold_out_lowest_hashes(
    out_dir: Path, writers: dict[str, ShardWriter], report: PrepareReport, options: PrepareOptions
) -> dict[str, ShardWriter]:
    """A small corpus that the hash rule left without held-out documents: hold out those
    with the lowest hashes instead (the same ones on every run), rewriting the shards."""
    count = max(1, round(options.valid_fraction * report.kept["train"]))
    chosen = set(sorted((f["sha256"] for f in report.files), key=lambda sha: int(sha[:8], 16))[:count])
    old_shards = [out_dir / name for name in writers["train"].shards]
    records = [r for path in old_shards for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]
    for path in old_shards:
        path.unlink()
    new = {split: ShardWriter(out_dir, split, options.shard_bytes) for split in SPLITS}
    for record in records:
        new["valid" if record["sha256"] in chosen else "train"].write(record)
    for writer in new.values():
        writer.close()
    for entry in report.files:
        entry["split"] = "valid" if entry["sha256"] in chosen else "train"
    report.kept = Counter(f["split"] for f in report.files)
    return new


def format_report(report: PrepareReport, out_dir: Path) -> str:
    kept = sum(report.kept.values())
    lines = [
        f"kept {kept} files ({report.kept_bytes / 2**20:.1f} MiB): "
        f"{report.kept['train']} train, {report.kept['valid']} held out -> {out_dir / MANIFEST}",
        f"skipped {sum(report.skipped.values())}:",
    ]
    lines += [f"  {reason:16} {count}" for reason, count in report.skipped.most_common()]
    if report.redacted_files:
        lines.append(f"kept {len(report.redacted_files)} files with credentials redacted (manifest: redacted_files)")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="filter and deduplicate repositories/folders into a text corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repo", nargs="+", action="extend", default=[], metavar="PATH", help="git work trees")
    p.add_argument("--dir", nargs="+", action="extend", default=[], metavar="PATH", help="plain (non-git) folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (shards + manifest.json)")
    p.add_argument(
        "--languages",
        default=",".join(DEFAULT_LANGUAGES),
        help=f"comma-separated languages to keep (default: all code languages). Known: {', '.join(LANGUAGES)}",
    )
    p.add_argument("--extensions", default="", help="comma-separated extra extensions/file names to keep (.ext)")
    defaults = FilterOptions()
    p.add_argument("--max-bytes", type=int, default=defaults.max_bytes, help="skip larger files")
    p.add_argument("--max-line-length", type=int, default=defaults.max_line_length, help="longer line = minified")
    p.add_argument("--near-threshold", type=float, default=PrepareOptions.near_threshold, help="MinHash Jaccard")
    p.add_argument("--no-near-dedup", action="store_true", help="drop exact duplicates only")
    p.add_argument("--valid-fraction", type=float, default=PrepareOptions.valid_fraction, help="held-out share")
    p.add_argument(
        "--secrets",
        choices=["drop", "redact"],
        default="drop",
        help="a file holding a credential: drop it (default), or keep it with the credential replaced by <REDACTED>",
    )
    p.add_argument(
        "--secret-scanner",
        choices=SECRET_SCANNERS,
        default="builtin",
        help="built-in rules (default), detect-secrets (pip install detect-secrets), or both",
    )
    p.add_argument("--list-skipped", action="store_true", help="print every skipped path with its reason")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        filters = FilterOptions(
            languages=tuple(x.strip() for x in args.languages.split(",") if x.strip()),
            extra_extensions=tuple(x.strip() for x in args.extensions.split(",") if x.strip()),
            max_bytes=args.max_bytes,
            max_line_length=args.max_line_length,
        )
    except ValueError as e:
        print(f"prepare: --languages: {e}", file=sys.stderr)
        return 2
    options = PrepareOptions(
        filters=filters,
        near_duplicates=not args.no_near_dedup,
        near_threshold=args.near_threshold,
        valid_fraction=args.valid_fraction,
        secrets=args.secrets,
        secret_scanner=args.secret_scanner,
    )
    if args.secret_scanner != "builtin" and importlib.util.find_spec("detect_secrets") is None:
        print(
            "prepare: --secret-scanner: detect-secrets is not installed (pip install detect-secrets)", file=sys.stderr
        )
        return 2
    try:
        report = prepare_corpus(args.repo, args.dir, args.out, options)
    except SourceError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    if args.list_skipped:
        for entry in report.skipped_files:
            print(f"skip {entry['reason']:16} {entry['path']}  {entry['detail']}")
        for entry in report.redacted_files:
            print(f"redacted             {entry['path']}  {entry['detail']}")
    print(format_report(report, args.out))
    return 0
