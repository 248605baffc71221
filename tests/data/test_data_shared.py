"""The data layer on real text from ../shared/data (skipped where it is absent)."""

import math

import pytest

from jaxlab.data import builtin
from jaxlab.data import pipeline
from jaxlab.data import text as text_lib
from jaxlab.data import tokenizer as tokenizer_lib


def _shared_file(*parts):
  root = builtin.shared_data_dir()
  if root is None:
    pytest.skip("../shared/data is absent (a fresh clone); this test needs real data")
  path = root.joinpath(*parts)
  if not path.is_file():
    pytest.skip(f"{path} is absent")
  return path


@pytest.fixture(scope="module")
def pile(tmp_path_factory):
  path = _shared_file("text", "pile_sample.jsonl")
  data = text_lib.prepare_text(
      [str(path)], data_dir=str(tmp_path_factory.mktemp("tfds")), text_field="contents")
  return path, data


def test_every_pile_document_is_accounted_for(pile):
  path, data = pile
  with open(path, "rb") as f:
    n_lines = sum(1 for _ in f)
  assert n_lines == 1000  # as documented in ../shared/data/README.md
  with open(data.rejects_path, encoding="utf-8") as f:
    n_reject_lines = sum(1 for _ in f)
  assert sum(data.num_records.values()) + sum(data.rejects.values()) == n_lines
  assert n_reject_lines == sum(data.rejects.values())
  # Around 5% held out for validation (binomial, 1000 draws: 50 +- 7).
  assert 20 <= data.num_records["validation"] <= 80


def test_tokenizer_from_a_data_source_round_trips_held_out_documents(pile, tmp_path):
  _, data = pile
  texts = (data.train[i]["text"] for i in range(len(data.train)))  # streamed
  tok = tokenizer_lib.train_bpe(texts, vocab_size=1000, out_dir=str(tmp_path / "tok"))
  held_out = [data.validation[i]["text"] for i in range(len(data.validation))]
  for text in held_out:
    assert tok.decode(tok(text)["input_ids"]) == text

  # One finite epoch of packed batches over the held-out documents keeps every
  # token: sum(mask) + number of chunks == tokens (+1 EOS per document).
  total = sum(len(tok(t)["input_ids"]) + 1 for t in held_out)
  batches = list(pipeline.lm_dataset(
      data.validation, tok, seq_len=128, batch_size=8, seed=0, num_epochs=1))
  assert sum(float(b["mask"].sum()) for b in batches) + math.ceil(total / 129) == total
