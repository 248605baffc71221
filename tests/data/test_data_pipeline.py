"""lm_dataset: packing without loss, per-process sharding, epochs, checkpoints."""

import json
import math

import numpy as np
import pytest

from jaxlab.data import pipeline
from jaxlab.data import text as text_lib

SEQ_LEN = 16
BATCH = 5


def _docs(n=37):
  """Documents of varied length, each naming itself; some span several chunks."""
  return [
      {"text": f"Document {i}: " + " ".join(f"word{j % 11}" for j in range(3 + (i * 7) % 40))}
      for i in range(n)
  ]


def _token_stream(docs, tok):
  """The reference stream, computed with the tokenizer alone."""
  stream = []
  for d in docs:
    stream += tok(d["text"])["input_ids"] + [tok.eos_token_id]
  return stream


def _real_tokens_per_row(batches):
  """Each chunk's real tokens: its first input, then the targets under mask 1."""
  rows = []
  for b in batches:
    for inputs, targets, mask in zip(b["inputs"], b["targets"], b["mask"]):
      rows.append([int(inputs[0])] + [int(t) for t in targets[mask == 1]])
  return rows


def _documents(rows, eos):
  """Splits the real token stream at EOS (rows must all be chunks: batch
  size 1 and a finite epoch leave no padding rows)."""
  stream = [t for row in rows for t in row]
  docs, current = [], []
  for t in stream:
    current.append(t)
    if t == eos:
      docs.append(current)
      current = []
  assert not current, "the stream must end with EOS"
  return docs


def test_batch_format(bpe):
  ds = pipeline.lm_dataset(_docs(), bpe, seq_len=SEQ_LEN, batch_size=BATCH, seed=0)
  batch = next(iter(ds))
  assert set(batch) == {"inputs", "targets", "mask"}
  for key, dtype in (("inputs", np.int32), ("targets", np.int32), ("mask", np.float32)):
    assert batch[key].dtype == dtype
    assert batch[key].shape == (BATCH, SEQ_LEN)
  # Next-token shift: within a chunk, targets are inputs moved left by one.
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_packing_loses_no_tokens(bpe):
  docs = _docs()
  stream = _token_stream(docs, bpe)
  total = len(stream)  # tokens of all documents, +1 EOS each
  chunk = SEQ_LEN + 1
  n_chunks = math.ceil(total / chunk)
  # The inputs exercise the padded paths: a partial last chunk, a partial batch.
  assert total % chunk != 0 and n_chunks % BATCH != 0

  batches = list(pipeline.lm_dataset(
      docs, bpe, seq_len=SEQ_LEN, batch_size=BATCH, seed=0, shuffle=False, num_epochs=1))

  # Invariant: a chunk of n real tokens gives n - 1 (input, target) pairs, as
  # its first token is never a target. All chunks are full but the last, so
  # sum(mask) = sum over chunks of (n - 1) = total tokens - number of chunks.
  mask_sum = sum(float(b["mask"].sum()) for b in batches)
  assert mask_sum + n_chunks == total
  assert len(batches) == math.ceil(n_chunks / BATCH)

  # In order, the real tokens of the chunks are exactly the token stream; rows
  # past the last chunk (batch padding) hold nothing.
  rows = _real_tokens_per_row(batches)
  assert [t for row in rows[:n_chunks] for t in row] == stream
  assert all(len(row) == chunk for row in rows[: n_chunks - 1])
  assert sum(float(m.sum()) for m in batches[-1]["mask"][n_chunks % BATCH:]) == 0


def test_two_processes_see_disjoint_records_covering_all(bpe):
  docs = _docs()
  eos = bpe.eos_token_id
  seen = []
  for process_index in range(2):
    batches = list(pipeline.lm_dataset(
        docs, bpe, seq_len=SEQ_LEN, batch_size=1, seed=3, num_epochs=1,
        process_index=process_index, process_count=2))
    seen.append([bpe.decode(d[:-1]) for d in _documents(_real_tokens_per_row(batches), eos)])
  first, second = set(seen[0]), set(seen[1])
  assert len(first) == len(seen[0]) and len(second) == len(seen[1])  # no repeats
  assert not first & second
  assert first | second == {d["text"] for d in docs}
  assert abs(len(first) - len(second)) <= 1


def test_each_epoch_is_a_different_shuffle_of_all_records(bpe):
  docs = _docs(20)
  batches = list(pipeline.lm_dataset(
      docs, bpe, seq_len=SEQ_LEN, batch_size=1, seed=5, num_epochs=2))
  rows = _real_tokens_per_row(batches)
  texts = [bpe.decode(d[:-1]) for d in _documents(rows, bpe.eos_token_id)]
  epoch0, epoch1 = texts[:20], texts[20:]
  every = sorted(d["text"] for d in docs)
  assert sorted(epoch0) == every and sorted(epoch1) == every
  assert epoch0 != epoch1
  assert epoch0 != [d["text"] for d in docs]  # shuffled, not in source order


def _assert_same(batches, expected):
  assert len(batches) == len(expected)
  for got, want in zip(batches, expected):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.fixture(scope="module")
def text_source(tmp_path_factory, corpus_file):
  """A real tfds array_record source: the pydoc corpus, one record a paragraph."""
  data_dir = tmp_path_factory.mktemp("tfds")
  return text_lib.prepare_text([corpus_file], data_dir=str(data_dir)).train


@pytest.mark.parametrize("consumed", [0, 1, 5])
def test_checkpoint_resumes_with_the_same_batches(bpe, text_source, consumed):
  build = lambda: pipeline.lm_dataset(
      text_source, bpe, seq_len=32, batch_size=2, seed=7)  # repeats forever
  reference = iter(build())
  expected = [next(reference) for _ in range(consumed + 4)]

  it = iter(build())
  for _ in range(consumed):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
  restored = iter(build())
  restored.set_state(state)
  _assert_same([next(restored) for _ in range(4)], expected[consumed:])


def test_checkpoint_near_the_end_of_finite_epochs(bpe):
  docs = _docs(12)
  build = lambda: pipeline.lm_dataset(
      docs, bpe, seq_len=SEQ_LEN, batch_size=BATCH, seed=1, num_epochs=2)
  expected = list(build())
  for consumed in range(len(expected)):
    it = iter(build())
    for _ in range(consumed):
      next(it)
    restored = iter(build())
    restored.set_state(json.loads(json.dumps(it.get_state())))
    _assert_same(list(restored), expected[consumed:])
