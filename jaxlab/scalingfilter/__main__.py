"""python -m jaxlab.scalingfilter {score, select, diversity} ...

  score   --small PATH --large PATH --input SRC [SRC ...] --output OUT [--sharded] [--overwrite]
          [--text-field F] [--id-field F] [--data-dir TFDS_DIR] [--long-docs window|truncate|stride]
          [--held-out SRC ...] [--check-docs 256] [--allow-worse-large]
          First both models' perplexity on --check-docs held-out texts (--held-out, else the
          input's first documents, which the pair did not train on unless you trained it on
          them) is printed; when the large model's is not lower, scoring is refused
          (exit status 1) unless --allow-worse-large, which warns instead.
          SRC: a .jsonl/.jsonl.gz/.parquet/.txt file, a directory of them, or tfds:NAME[:split]
          (read with tfds.data_source from --data-dir; e.g. tfds:local_text/hXXXX --id-field index).
          OUT: one JSONL output file (one process). With --sharded, OUT is a directory: each JAX
          process scores every process_count-th input file into OUT/part-IIIII-of-NNNNN.jsonl.
          An existing OUT is resumed (ids already there keep their scores, and the run says how
          many it skipped); --overwrite deletes it and rescores everything.
  select  --scores OUT.jsonl --output KEPT.jsonl --method topk|threshold|temperature|random|ppl_gate|dsir|classifier
          [--k 70] [--threshold X] [--temperature T] [--input DOCS --text-field F --id-field F]
          [--target FILE] [--positives FILE --negatives FILE] [--seed 0]

  diversity --input DOCS [--ids KEPT.jsonl] [--text-field F] [--id-field F] [--group-size 10000]
          Vendi score (mean ± std over groups) of the documents, or of the kept ones only

A meta-model PATH is a GPT-2-format folder or a jaxlab LM run directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jaxlab.scalingfilter import premise, score as score_lib
from jaxlab.scalingfilter import select as select_lib


def _texts(path: str, text_field: str, id_field: str) -> dict[str, str]:
  return {i: t for i, t in score_lib.read_documents(path, text_field, id_field) if isinstance(t, str)}


def cmd_score(args) -> int:
  import jax
  if not args.sharded and jax.process_count() > 1:
    raise SystemExit(f"{jax.process_count()} processes: pass --sharded (--output is then a directory, "
                     "one part per process)")
  if not args.sharded and os.path.isdir(args.output):
    raise SystemExit(f"--output {args.output} is a directory: pass --sharded to write one part per process there")
  small, large = score_lib.load_meta_model(args.small), score_lib.load_meta_model(args.large)
  options = score_lib.ScoreOptions(long_docs=args.long_docs, min_context=args.min_context, context=args.context,
                                   boundaries=args.boundaries, dtype=args.dtype)
  try:
    options.checked(min(small.context, large.context), prefix="--")
  except score_lib.ConfigError as e:
    raise SystemExit(f"score: {str(e).replace('_', '-')}") from None
  # ScalingFilter's premise: the large model is the better one on held-out text
  premise.check_or_exit(small, large, args.held_out or args.input, n=args.check_docs,
                        allow_worse_large=args.allow_worse_large, flag="--allow-worse-large",
                        text_field=args.text_field, id_field=args.id_field, data_dir=args.data_dir,
                        tokens_per_batch=args.tokens_per_batch, options=options)
  common = dict(text_field=args.text_field, id_field=args.id_field, data_dir=args.data_dir,
                tokens_per_batch=args.tokens_per_batch, overwrite=args.overwrite, options=options)
  if args.sharded:
    counts = score_lib.score_sharded(args.input, args.output, small, large, **common)
    output = score_lib.part_path(args.output, counts["process_index"], counts["process_count"])
  else:
    counts = score_lib.score_file(args.input, args.output, small, large, **common)
    output = args.output
  if counts["resumed_from"]:
    print(f"resumed {output}: {counts['skipped_done']} documents already there were skipped and keep their "
          "old scores (--overwrite rescores them)", file=sys.stderr)
  print(json.dumps(counts))
  if counts["rejected"]:
    print(f"rejected documents and reasons: {output}.rejects.jsonl", file=sys.stderr)
  return 0


def cmd_select(args) -> int:
  read_lines = lambda p: [t for _, t in score_lib.read_documents(p, args.text_field, args.id_field)
                          if isinstance(t, str)]
  kwargs = dict(k=args.k, threshold=args.threshold, temperature=args.temperature, low=args.low, high=args.high,
                seed=args.seed)
  if args.method in ("dsir", "classifier"):
    kwargs["texts"] = _texts(args.input, args.text_field, args.id_field)  # id -> text, read once
  if args.method == "dsir":
    kwargs["target_texts"] = read_lines(args.target)
  elif args.method == "classifier":
    kwargs.update(positives=read_lines(args.positives), negatives=read_lines(args.negatives))
  print(json.dumps(select_lib.select_file(args.scores, args.output, args.method, **kwargs)))
  return 0


def cmd_diversity(args) -> int:
  from jaxlab.scalingfilter import diversity
  texts = _texts(args.input, args.text_field, args.id_field)
  if args.ids:
    texts = {i: texts[i] for i in (json.loads(l)["id"] for l in open(args.ids) if l.strip())}
  result = diversity.diversity(list(texts.values()), group_size=args.group_size)
  print(json.dumps({k: v for k, v in result.items() if k != "vendi_groups"}))
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxlab.scalingfilter", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("score")
  s.add_argument("--small", required=True)
  s.add_argument("--large", required=True)
  s.add_argument("--input", required=True, nargs="+")
  s.add_argument("--output", required=True, help="a JSONL file, or with --sharded a directory")
  s.add_argument("--sharded", action="store_true",
                 help="split the input files over the JAX processes, one part file each under --output")
  s.add_argument("--overwrite", action="store_true", help="rescore everything instead of resuming --output")
  s.add_argument("--data-dir", default="", help="tfds data_dir for tfds:NAME inputs")
  s.add_argument("--text-field", default="text")
  s.add_argument("--id-field", default="id")
  s.add_argument("--tokens-per-batch", type=int, default=16384)
  s.add_argument("--long-docs", choices=score_lib.LONG_DOCS, default="window",
                 help="documents longer than the context: one-token-overlap windows, the first C tokens "
                      "(the reference), or sliding windows with --min-context tokens of context")
  s.add_argument("--min-context", type=int, default=0, help="stride: least context per prediction (default C/2)")
  s.add_argument("--context", type=int, default=0,
                 help="tokens per window (default: the length the meta-models trained on, also the most allowed)")
  s.add_argument("--boundaries", choices=score_lib.BOUNDARIES, default="eos",
                 help="eos: an EOS before and after each text, as in training; none: the text alone (the reference)")
  s.add_argument("--dtype", choices=score_lib.SCORE_DTYPES, default="float32", help="parameters and compute")
  s.add_argument("--held-out", nargs="+", default=None,
                 help="text neither meta-model trained on, for the premise check (default: the input itself)")
  s.add_argument("--check-docs", type=int, default=256, help="texts of --held-out (or the input) the check scores")
  s.add_argument("--allow-worse-large", action="store_true",
                 help="score even when the large model's held-out perplexity is not the lower (warns)")
  s.set_defaults(fn=cmd_score)
  t = sub.add_parser("select")
  t.add_argument("--scores", required=True)
  t.add_argument("--output", required=True)
  t.add_argument("--method", default="topk",
                 choices=select_lib.METHODS)
  t.add_argument("--k", type=float, default=70.0)
  t.add_argument("--threshold", type=float, default=1.0)
  t.add_argument("--temperature", type=float, default=1.0)
  t.add_argument("--low", type=float, default=15.0)
  t.add_argument("--high", type=float, default=85.0)
  t.add_argument("--input", help="the scored documents (for dsir and classifier)")
  t.add_argument("--text-field", default="text")
  t.add_argument("--id-field", default="id")
  t.add_argument("--target", help="target corpus for dsir")
  t.add_argument("--positives")
  t.add_argument("--negatives")
  t.add_argument("--seed", type=int, default=0)
  t.set_defaults(fn=cmd_select)
  v = sub.add_parser("diversity")
  v.add_argument("--input", required=True)
  v.add_argument("--ids", help="a select output: only these documents")
  v.add_argument("--text-field", default="text")
  v.add_argument("--id-field", default="id")
  v.add_argument("--group-size", type=int, default=10_000)
  v.set_defaults(fn=cmd_diversity)
  args = p.parse_args(argv)
  if args.command == "select":
    needed = {"dsir": ("input", "target"), "classifier": ("input", "positives", "negatives")}.get(args.method, ())
    missing = [f"--{name}" for name in needed if not getattr(args, name)]
    if missing:
      p.error(f"--method {args.method} needs {' '.join(missing)}")
  return args.fn(args)


if __name__ == "__main__":
  sys.exit(main())
