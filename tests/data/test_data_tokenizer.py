"""Byte-level BPE: training, exact round trips, save/reload through transformers."""

import json

import pytest
import transformers

from jaxlab.data import tokenizer as tokenizer_lib

# Not in the training text (which is pydoc prose): other words, scripts, emoji,
# runs of spaces and tabs, which a byte-level BPE must still reproduce exactly.
HELD_OUT = [
    "Pride and Prejudice, chapter 1: It is a truth universally acknowledged...",
    "  leading spaces,\ttabs\t\tand trailing spaces   \n\n\nnewlines\r\n",
    "Ünïcödé — naïve café; 日本語のテキスト; emoji 🙂🚀; math ∑ x² ≤ ∞",
    "x" * 300,
]


def test_round_trip_on_held_out_text(bpe):
  for text in HELD_OUT:
    ids = bpe(text)["input_ids"]
    assert bpe.decode(ids) == text
  # It learned merges: far fewer tokens than bytes on prose like its training text.
  prose = "The function returns the value of the expression for each of the arguments."
  assert len(bpe(prose)["input_ids"]) < 0.5 * len(prose.encode())


def test_special_token_is_eos_bos_unk_pad(bpe):
  eos = bpe.convert_tokens_to_ids("<|endoftext|>")
  assert bpe.eos_token_id == bpe.bos_token_id == bpe.unk_token_id == bpe.pad_token_id == eos
  assert 257 <= len(bpe) <= 400  # 256 bytes + EOS + merges, at most vocab_size


def test_saved_folder_reloads_with_auto_tokenizer(bpe, tmp_path):
  out = tmp_path / "tok"
  tok = tokenizer_lib.train_bpe(HELD_OUT * 3, vocab_size=300, out_dir=str(out))
  reloaded = transformers.AutoTokenizer.from_pretrained(str(out))
  loaded = tokenizer_lib.load_tokenizer(str(out))
  for text in HELD_OUT:
    ids = tok(text)["input_ids"]
    assert reloaded(text)["input_ids"] == ids
    assert loaded(text)["input_ids"] == ids
  assert reloaded.eos_token == "<|endoftext|>"


def test_trains_from_files_streaming_records(tmp_path):
  path = tmp_path / "docs.jsonl"
  docs = [{"contents": f"Document {i} talks about apples and oranges."} for i in range(50)]
  path.write_text("".join(json.dumps(d) + "\n" for d in docs) + "not json\n")
  tok = tokenizer_lib.train_bpe(
      (p for p in [str(path)]), vocab_size=300, out_dir=str(tmp_path / "tok"), text_field="contents"
  )
  # "apples" occurs in every document, so BPE merged it into few tokens.
  assert len(tok(" apples")["input_ids"]) <= 2
  # Training read the 50 good records and skipped the bad line.
  assert list(tokenizer_lib.iter_texts([str(path)], "contents")) == [d["contents"] for d in docs]


def test_a_missing_training_file_is_an_error_not_a_text(tmp_path):
  with pytest.raises(FileNotFoundError, match="typo.jsonl"):
    tokenizer_lib.train_bpe([str(tmp_path / "typo.jsonl")], vocab_size=300, out_dir=str(tmp_path))


def test_load_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "no_such_tokenizer"))
