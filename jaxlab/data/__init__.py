"""jaxlab's data layer.

- `builtin`: corpora that ship with Python (the fresh-machine default) and the
  optional `../shared/data` folder.
- `text`: a tfds array_record builder over local .txt/.jsonl(.gz) files, with
  counted and logged rejects (`prepare_text`).
- `tokenizer`: byte-level BPE trained locally, or loaded from a local folder.
- `pipeline`: grain pipeline to packed, checkpointable LM batches (`lm_dataset`).

Submodules are not imported here, so `import jaxlab.data.builtin` stays light.
"""
