"""Tiny models and tokenizers built at test time: no network, no GPU, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import torch

from engine.checkpoints import save_checkpoint
from engine.model import ModelArgs, Transformer
from training.train_tokenizer import LLAMA_SENTENCEPIECE_OPTIONS

TINY_VOCAB = 1000


def training_text() -> str:
    """Some real Python code to train a tokenizer on: two standard-library packages."""
    root = Path(json.__file__).parent.parent
    files = sorted((root / "json").glob("*.py")) + sorted((root / "asyncio").glob("*.py"))[:12]
    return "".join(f.read_text(encoding="utf-8") for f in files)


def train_tiny_tokenizer(out_dir: Path, vocab_size: int = TINY_VOCAB) -> Path:
    """A Llama-style SentencePiece BPE model with the four FIM pieces and "☺" (training's options)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text(training_text(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        character_coverage=1.0,
        max_sentence_length=1_000_000,
        minloglevel=2,
        **LLAMA_SENTENCEPIECE_OPTIONS,
    )
    return out_dir / "tokenizer.model"


def tiny_args(**overrides) -> ModelArgs:
    values = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TINY_VOCAB, max_seq_len=1024)
    values.update(overrides)
    return ModelArgs(**values)


def random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args)
    # Larger-than-default weights give peaked, non-degenerate distributions, so greedy
    # decoding is far from ties and comparisons between code paths are meaningful.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model.eval()


def write_tiny_checkpoint(out_dir: Path, tokenizer_path: Path, seed: int = 0, **overrides) -> Path:
    return save_checkpoint(out_dir, random_model(tiny_args(**overrides), seed), tokenizer_path)
