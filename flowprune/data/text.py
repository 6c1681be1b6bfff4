"""Text calibration and evaluation data for language models, and perplexity.

``wikitext`` is the real path for online users (``datasets.load_dataset("wikitext", "wikitext-2-raw-v1")``);
``python_docs`` uses CPython's own documentation (``pydoc_data.topics``, ~465k characters, on every
machine) and ``text_files`` any local files.  Each returns a list of ``{"input_ids": LongTensor[b, seq_len]}``
batches cut from the tokenized text in non-overlapping windows spread evenly over the split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError

Tokenizer = Callable[..., Any]


def _ids(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    enc = tokenizer(text)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    return torch.as_tensor(ids, dtype=torch.long).flatten()


def windows(
    ids: torch.Tensor, seq_len: int, num_samples: int | None, batch_size: int
) -> list[dict]:
    """Non-overlapping windows of ``seq_len`` tokens, ``num_samples`` of them spread evenly (all if None)."""
    n = len(ids) // seq_len
    if n == 0:
        raise InputError(
            f"the text has {len(ids)} tokens, fewer than seq_len={seq_len}: use a shorter seq_len"
        )
    starts = torch.arange(n) * seq_len
    if num_samples is not None and num_samples < n:
        starts = starts[torch.linspace(0, n - 1, num_samples).round().long()]
    rows = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    return [{"input_ids": rows[i : i + batch_size]} for i in range(0, len(rows), batch_size)]


def _split(text: str, split: str, held_out: float = 0.1) -> str:
    # last `held_out` of the characters is "test"; cut at a line break so no line is shared
    cut = text.rfind("\n", 0, int(len(text) * (1 - held_out)))
    if split in ("train", "calibration"):
        return text[:cut]
    if split in ("test", "validation", "heldout"):
        return text[cut:]
    raise InputError(f"split must be 'train' or 'test', got {split!r}")


def python_docs_text(split: str = "train") -> str:
    """CPython's reference documentation (``pydoc_data.topics``): 90 % train, last 10 % test."""
    from pydoc_data.topics import topics

    return _split("\n\n".join(topics[k] for k in sorted(topics)), split)


def python_docs(
    tokenizer: Tokenizer,
    split: str = "train",
    seq_len: int = 128,
    num_samples: int | None = 32,
    batch_size: int = 8,
) -> list[dict]:
    """Batches from CPython's documentation; available offline on every machine.

    >>> batches = flowprune.data.python_docs(tokenizer, seq_len=128, num_samples=32)
    """
    return windows(_ids(tokenizer, python_docs_text(split)), seq_len, num_samples, batch_size)


def text_files(
    paths: Sequence[str | os.PathLike],
    tokenizer: Tokenizer,
    split: str | None = None,
    seq_len: int = 128,
    num_samples: int | None = 32,
    batch_size: int = 8,
) -> list[dict]:
    """Batches from local UTF-8 text files (``split`` "train"/"test" takes 90 % / the last 10 %)."""
    texts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"text file {str(p)!r} does not exist")
        texts.append(p.read_text(encoding="utf-8", errors="replace"))
    text = "\n\n".join(texts)
    return windows(
        _ids(tokenizer, _split(text, split) if split else text), seq_len, num_samples, batch_size
    )


def wikitext(
    tokenizer: Tokenizer,
    split: str = "train",
    seq_len: int = 128,
    num_samples: int | None = 32,
    batch_size: int = 8,
) -> list[dict]:
    """Batches from Wikitext-2 (raw) through ``datasets``; needs the Hugging Face hub or its cache."""
    try:
        import datasets

        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:  # offline, no cache, hub down
        raise InputError(
            f"could not load wikitext-2 ({type(e).__name__}: {str(e)[:200]}). Offline, use "
            f"flowprune.data.python_docs(tokenizer) (CPython's documentation, always available) or "
            f"flowprune.data.text_files([...], tokenizer); on the command line --data python-docs "
            f"or --data text:PATH"
        ) from e
    return windows(_ids(tokenizer, "\n\n".join(ds["text"])), seq_len, num_samples, batch_size)
