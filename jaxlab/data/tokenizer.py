"""Byte-level BPE tokenizers, trained locally or loaded from a local folder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import os

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
import transformers

EOS = "<|endoftext|>"
_FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


def _is_file(item: str | os.PathLike) -> bool:
  """A path-like, or a one-line string ending in .txt/.jsonl/.jsonl.gz.

  Such a string is taken as a path even if the file is missing, so a typo
  raises FileNotFoundError instead of training on the file name.
  """
  if isinstance(item, os.PathLike):
    return True
  return item.endswith(_FILE_SUFFIXES) and "\n" not in item


def iter_texts(
    files_or_texts: Iterable[str | os.PathLike], text_field: str = "text"
) -> Iterator[str]:
  """Streams texts: files are read record by record (rejects skipped, as in
  `prepare_text`), other strings are texts themselves."""
  from jaxlab.data import text as text_lib  # tensorflow-datasets: only when files are read
  for item in files_or_texts:
    if _is_file(item):
      (path,) = text_lib.resolve_files([item])
      for record in text_lib.read_records(path, text_field):
        if isinstance(record, text_lib.Record):
          yield record.text
    else:
      yield item


def byte_level_bpe(vocab_size: int) -> tuple[tokenizers.Tokenizer, trainers.BpeTrainer]:
  """An untrained GPT-2-style tokenizer and its trainer."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  # Offsets only; never changes ids, so decode(encode(s)) == s.
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[EOS],
      # All 256 byte symbols, so any input encodes without an unknown token.
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  return tok, trainer


def wrap(tok: tokenizers.Tokenizer) -> transformers.PreTrainedTokenizerFast:
  """transformers' view: EOS doubles as BOS, UNK and PAD, as in GPT-2."""
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      bos_token=EOS,
      eos_token=EOS,
      unk_token=EOS,
      pad_token=EOS,
      # Byte-level decoding is exact; the clean-up would alter spaces.
      clean_up_tokenization_spaces=False,
  )


def train_bpe(
    files_or_texts: Iterable[str | os.PathLike],
    *,
    vocab_size: int,
    out_dir: str,
    text_field: str = "text",
) -> transformers.PreTrainedTokenizerFast:
  """Trains a byte-level BPE on texts or files and saves it to `out_dir`.

  `files_or_texts` is streamed (never held in memory): each item is a file if it
  is path-like or a one-line string ending in .txt/.jsonl/.jsonl.gz (read like
  `prepare_text`, with `text_field`; rejects are skipped), otherwise a text.
  """
  if vocab_size < 257:
    raise ValueError(f"vocab_size must cover the 256 bytes and {EOS}; got {vocab_size}")
  tok, trainer = byte_level_bpe(vocab_size)
  tok.train_from_iterator(iter_texts(files_or_texts, text_field), trainer=trainer)
  fast = wrap(tok)
  fast.save_pretrained(out_dir)
  return fast


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerFast:
  """Loads a tokenizer from a local folder; never contacts a hub."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Tokenizer folder not found: {path}")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
