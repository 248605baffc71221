"""prepare_text: records, rejects, splits, reuse (tfds array_record builder)."""

import gzip
import json
import os

import pytest

from jaxlab.data import builtin
from jaxlab.data import text as text_lib

GOOD_JSONL = [f"good document number {i}, with some words." for i in range(8)]


def _write_inputs(tmp_path):
  """A .jsonl with 8 good lines and one bad line of each JSON kind, and a .txt
  with 3 good paragraphs and one with an invalid UTF-8 line."""
  lines = [json.dumps({"text": t}) for t in GOOD_JSONL[:3]]
  lines += [
      '{"text": "unterminated',  # line 4: bad_json
      json.dumps({"body": "no text field"}),  # line 5: missing_field
      json.dumps({"text": 42}),  # line 6: not_string
      json.dumps({"text": " \n\t "}),  # line 7: empty_text
      json.dumps(["a", "list"]),  # line 8: not_object
  ]
  lines += [json.dumps({"text": t}) for t in GOOD_JSONL[3:]]  # lines 9-13
  jsonl = tmp_path / "docs.jsonl"
  jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")

  txt = tmp_path / "notes.txt"
  txt.write_bytes(
      b"First paragraph,\nover two lines.\n"  # lines 1-2
      b"\n"
      b"Second paragraph.\n"  # line 4
      b"\n\n"
      b"Broken paragraph starts fine\nbut this line \xff\xfe is not UTF-8\n"  # lines 7-8
      b"   \n"
      b"Last paragraph.\n"  # line 10
  )
  good_txt = ["First paragraph,\nover two lines.", "Second paragraph.", "Last paragraph."]
  expected_rejects = [
      ("docs.jsonl", 4, "bad_json"),
      ("docs.jsonl", 5, "missing_field"),
      ("docs.jsonl", 6, "not_string"),
      ("docs.jsonl", 7, "empty_text"),
      ("docs.jsonl", 8, "not_object"),
      ("notes.txt", 8, "invalid_utf8"),
  ]
  return [str(jsonl), str(txt)], GOOD_JSONL + good_txt, expected_rejects


def _all_records(data):
  return [data.train[i] for i in range(len(data.train))] + [
      data.validation[i] for i in range(len(data.validation))
  ]


def test_rejects_are_counted_and_written(tmp_path):
  files, good, expected = _write_inputs(tmp_path)
  data = text_lib.prepare_text(files, data_dir=str(tmp_path / "tfds"), validation_fraction=0.3)

  assert data.rejects == {
      "bad_json": 1, "missing_field": 1, "not_string": 1,
      "empty_text": 1, "not_object": 1, "invalid_utf8": 1,
  }
  with open(data.rejects_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [(r["file"], r["line"], r["reason"]) for r in rows] == expected
  assert rows[0]["excerpt"] == '{"text": "unterminated'
  assert "\\xff\\xfe" in rows[-1]["excerpt"]  # the bad bytes, escaped

  # Every good record is present exactly once, in one split or the other.
  records = _all_records(data)
  assert sum(data.num_records.values()) == len(good) == 11
  assert sorted(r["text"] for r in records) == sorted(good)
  assert all(isinstance(r["text"], str) for r in records)
  assert data.num_records["train"] > 0 and data.num_records["validation"] > 0
  # Each split keeps file order: docs.jsonl (given first) by index, then notes.txt.
  for source in (data.train, data.validation):
    in_split = [source[i] for i in range(len(source))]
    order = [(r["source"] != "docs.jsonl", r["index"]) for r in in_split]
    assert order == sorted(order)
  # Indices count candidates, rejects included: the jsonl's 9th line is index 8.
  where = {r["text"]: (r["source"], r["index"]) for r in records}
  assert where[GOOD_JSONL[3]] == ("docs.jsonl", 8)
  assert where["Last paragraph."] == ("notes.txt", 3)  # after 3 paragraphs, 1 rejected


def test_split_is_a_stable_hash_of_file_and_index(tmp_path):
  files, _, _ = _write_inputs(tmp_path)
  a = text_lib.prepare_text(files, data_dir=str(tmp_path / "a"), validation_fraction=0.3)
  b = text_lib.prepare_text(files, data_dir=str(tmp_path / "b"), validation_fraction=0.3)
  for data in (a, b):
    for split, source in (("train", data.train), ("validation", data.validation)):
      for i in range(len(source)):
        r = source[i]
        assert text_lib.split_of(r["source"], r["index"], 0.3) == split
  assert [a.validation[i] for i in range(len(a.validation))] == [
      b.validation[i] for i in range(len(b.validation))
  ]


def test_reuse_reports_same_counts_without_rebuilding(tmp_path):
  files, _, _ = _write_inputs(tmp_path)
  first = text_lib.prepare_text(files, data_dir=str(tmp_path / "tfds"))
  info = os.path.join(first.data_path, "dataset_info.json")
  stamp = os.stat(info).st_mtime_ns
  second = text_lib.prepare_text(files, data_dir=str(tmp_path / "tfds"))
  assert second.data_path == first.data_path
  assert os.stat(info).st_mtime_ns == stamp  # reused, not rebuilt
  assert (second.rejects, second.num_records) == (first.rejects, first.num_records)
  assert second.rejects_path == first.rejects_path


def test_changed_input_gets_a_new_dataset(tmp_path):
  files, good, _ = _write_inputs(tmp_path)
  first = text_lib.prepare_text(files, data_dir=str(tmp_path / "tfds"))
  with open(files[0], "a", encoding="utf-8") as f:
    f.write(json.dumps({"text": "an appended document"}) + "\n")
  second = text_lib.prepare_text(files, data_dir=str(tmp_path / "tfds"))
  assert second.data_path != first.data_path
  assert sum(second.num_records.values()) == len(good) + 1


def test_jsonl_gz_with_dotted_field(tmp_path):
  path = tmp_path / "nested.jsonl.gz"
  rows = [{"meta": {"body": f"nested text {i}"}, "id": i} for i in range(5)]
  rows.append({"meta": {"title": "no body"}})  # missing_field
  rows.append({"meta": "not a dict"})  # missing_field too: no path to follow
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  data = text_lib.prepare_text([str(path)], data_dir=str(tmp_path / "tfds"), text_field="meta.body")
  assert data.rejects == {"missing_field": 2}
  assert sorted(r["text"] for r in _all_records(data)) == [f"nested text {i}" for i in range(5)]


def test_missing_file_is_named(tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    text_lib.prepare_text([str(missing)], data_dir=str(tmp_path / "tfds"))


def test_builtin_corpus_is_pydoc_prose(tmp_path):
  from pydoc_data import topics

  (path,) = builtin.materialize("pydoc_topics", str(tmp_path))
  content = open(path, encoding="utf-8").read()
  # The text is the topic values, joined by blank lines.
  assert len(content) == sum(map(len, topics.topics.values())) + 2 * (len(topics.topics) - 1)
  assert content.startswith(topics.topics[min(topics.topics)])
  assert len(content) > 400_000
  stamp = os.stat(path).st_mtime_ns
  assert builtin.materialize("pydoc_topics", str(tmp_path)) == [path]
  assert os.stat(path).st_mtime_ns == stamp  # idempotent: not rewritten
