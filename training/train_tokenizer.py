"""`codellama-train tokenizer`: a Llama-style SentencePiece BPE tokenizer for a corpus.

The options are those of the Llama / Code Llama tokenizer: BPE, byte fallback (no unknown
characters), identity normalization, digits split, whitespace-only pieces allowed (runs of
indentation become single tokens), no extra-whitespace removal, unk/bos/eos = 0/1/2 and no
padding. The four FIM pieces and "☺" are user-defined symbols, so they are single tokens
that `engine.tokenizer.Tokenizer` finds by name and `encode_infilling` works.

SentencePiece trains on lines (as Llama's tokenizer was: "\\n" is the byte token
<0x0A>); from a large corpus it reservoir-samples `--input-sentences` lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from engine.tokenizer import FIM_PIECES, SMILEY, Tokenizer
from training.shards import CorpusError, iter_records


def corpus_lines(data_dir: Path, split: str = "train") -> Iterator[str]:
    for record in iter_records(data_dir, split):
        for line in record["text"].splitlines():
            if line.strip():
                yield line


# Llama / Code Llama's SentencePiece options, with the infilling pieces as single tokens.
LLAMA_SENTENCEPIECE_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    user_defined_symbols=[*FIM_PIECES, SMILEY],
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
)


def train_tokenizer(
    data_dir: str | Path,
    vocab_size: int,
    out_file: str | Path,
    input_sentences: int = 2_000_000,
    character_coverage: float = 0.99995,
    seed: int = 0,
    num_threads: int | None = None,
) -> Path:
    """Train on the corpus' train split and write the .model file atomically."""
    data_dir, out_file = Path(data_dir), Path(out_file)
    reserved = 3 + len(FIM_PIECES) + 1  # unk, bos, eos, the FIM pieces, ☺
    if vocab_size <= reserved + 256:
        raise ValueError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 256 + {reserved} pieces")
    spm.set_random_generator_seed(seed)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out_file.parent))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=corpus_lines(data_dir),
            model_prefix=str(staging / "tokenizer"),
            vocab_size=vocab_size,
            **LLAMA_SENTENCEPIECE_OPTIONS,
            character_coverage=character_coverage,
            input_sentence_size=input_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
        # Check it before it replaces anything: the engine must be able to infill with it.
        Tokenizer(staging / "tokenizer.model").require_infilling()
        os.replace(staging / "tokenizer.model", out_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_file


def chars_per_token(tok: Tokenizer, texts: list[str]) -> float:
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tok.encode(t)) for t in texts)
    return chars / max(tokens, 1)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train a Llama-style SentencePiece BPE tokenizer (with the FIM pieces) on a corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="corpus folder made by `prepare`")
    p.add_argument("--vocab-size", required=True, type=int, help="pieces in the vocabulary (Code Llama: 32016)")
    p.add_argument("--out", required=True, type=Path, help="the .model file to write")
    p.add_argument("--input-sentences", type=int, default=2_000_000, help="lines sampled from the corpus")
    p.add_argument("--character-coverage", type=float, default=0.99995, help="rarer characters use byte fallback")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = train_tokenizer(
            args.data, args.vocab_size, args.out, args.input_sentences, args.character_coverage, args.seed
        )
    except (CorpusError, ValueError, RuntimeError, OSError) as e:
        print(f"tokenizer: {e}", file=sys.stderr)
        return 2
    tok = Tokenizer(out)
    sample = [r["text"] for _, r in zip(range(200), iter_records(args.data, "valid"), strict=False)]
    sample = sample or [r["text"] for _, r in zip(range(200), iter_records(args.data, "train"), strict=False)]
    print(f"wrote {out}: {tok.vocab_size} pieces, {chars_per_token(tok, sample):.2f} characters/token on held-out text")
    return 0
