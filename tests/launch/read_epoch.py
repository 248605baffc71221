"""Run by test_multiprocess.py as N cooperating processes (python -m jaxlab.distributed):
each joins the runtime, builds the LM trainer's training pipeline for its own
jax.process_index() and reads one epoch, then two, recording which records it read.

  read_epoch.py OUT_DIR DATA_FILE DATA_DIR TOKENIZER_DIR
"""
import json
import os
import sys

from jaxlab import distributed

distributed.initialize()

import jax  # noqa: E402
import tokenizers  # noqa: E402

from jaxlab.data import pipeline, text, tokenizer as tokenizer_lib  # noqa: E402


class Tokenizer:
  """The run's trained tokenizer through the Rust library alone: what pipeline.tokenize
  uses, without transformers' import time."""

  def __init__(self, folder):
    self.backend_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    self.eos_token_id = self.backend_tokenizer.token_to_id(tokenizer_lib.EOS)


class Recording:
  """A random-access source that notes every index read."""

  def __init__(self, source):
    self.source, self.read = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.read.append(int(i))
    return self.source[i]


def main(out_dir, data_file, data_dir, tokenizer_dir):
  data = text.prepare_text([data_file], data_dir=data_dir, text_field="body")
  tok = Tokenizer(tokenizer_dir)
  out = {"num_records": len(data.train), "process_count": jax.process_count()}
  for epochs in (1, 2):
    source = Recording(data.train)
    ds = pipeline.lm_dataset(source, tok, seq_len=32, batch_size=4, seed=0, shuffle=True, num_epochs=epochs,
                             process_index=jax.process_index(), process_count=jax.process_count())
    out[f"batches_{epochs}"] = sum(1 for _ in ds)
    out[f"read_{epochs}"] = source.read
  with open(os.path.join(out_dir, f"process_{jax.process_index()}.json"), "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main(*sys.argv[1:])
