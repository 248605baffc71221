"""Fixtures shared by the data tests."""

import pytest

from jaxlab.data import builtin
from jaxlab.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
  """The built-in pydoc corpus, written once per session."""
  (path,) = builtin.materialize("pydoc_topics", str(tmp_path_factory.mktemp("corpus")))
  return path


@pytest.fixture(scope="session")
def bpe(tmp_path_factory):
  """A small byte-level BPE trained on the first 60k characters of pydoc."""
  from pydoc_data import topics

  text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))[:60_000]
  out_dir = tmp_path_factory.mktemp("tokenizer")
  return tokenizer_lib.train_bpe([text], vocab_size=400, out_dir=str(out_dir))
