"""`bertctl prepare`: build Arrow shards + index.json from a corpus (thin wrapper over data.prepare)."""

from __future__ import annotations

from typing import List, Optional

import typer

from orchestrator.cli.common import app, console
from orchestrator.spec import DEFAULT_VOCAB_SIZE


@app.command("prepare")
def prepare_cmd(
    input: List[str] = typer.Option(..., "--input", help="Text/JSONL/Parquet file or directory, s3:// URI, "
                                    "or builtin:python-stdlib-docs. Repeatable."),
    output: str = typer.Option(..., "--output", help="Shard directory (local or s3://)."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per row including [CLS]/[SEP]."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Train a WordPiece vocabulary of this size."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Use this vocab.txt instead of training one."),
    no_nsp: bool = typer.Option(False, "--no-nsp", help="Pack [CLS] tokens [SEP] rows without NSP pairs."),
    seed: int = typer.Option(1234, "--seed",
                             help="Seeds NSP pairing; with a given --vocab, the same seed gives identical shards."),
    text_column: str = typer.Option("text", "--text-column", help="JSONL field / Parquet column with the text."),
    shard_mb: float = typer.Option(128.0, "--shard-mb", help="Target shard size in MiB."),
    cased: bool = typer.Option(False, "--cased", help="Keep case (default: lowercase)."),
    local: bool = typer.Option(False, "--local", help="Tokenize in this process instead of Ray tasks."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Tokenize a corpus into packed Arrow IPC shards (restartable, deterministic)."""
    from orchestrator.data.prepare import PrepareConfig, prepare

    if vocab is None and vocab_size is None:
        vocab_size = DEFAULT_VOCAB_SIZE
    cfg = PrepareConfig(inputs=list(input), output=output, seq_len=seq_len, vocab_size=vocab_size, vocab=vocab,
                        lowercase=not cased, nsp=not no_nsp, seed=seed, text_column=text_column,
                        shard_bytes=int(shard_mb * 2**20), use_ray=not local)
    index = prepare(cfg, progress=not quiet)
    console.print(f"prepared {len(index.shards)} shard(s), {index.total_rows:,} rows, {index.tokens:,} tokens, "
                  f"vocab {index.vocab_size} -> {output}/index.json", highlight=False)
