"""ScalingFilter on datatrove: score a corpus with a meta-model pair over many tasks, then
keep the top k% by quality factor, writing the kept and the dropped corpus.

  python examples/scalingfilter_datatrove.py --small runs/sf/small --large runs/sf/large \\
      --input ../shared/data/text/pile_sample.jsonl --text-key contents --split 4 \\
      --output runs/sf_datatrove --tasks 4 --workers 2 --k 70

  # the same on Slurm, one GPU per task; --dry-run writes and prints the sbatch scripts
  # (datatrove's own launch code runs, with a stand-in `sbatch` that submits nothing)
  python examples/scalingfilter_datatrove.py ... --executor slurm --partition gpu --dry-run

First, once: the premise check (both models' held-out perplexity; refused when the large
model's is not the lower, unless --allow-worse-large). Then the stages (each its own
datatrove job, the second depending on the first):
  score   DocumentReader(input) -> ScoreDocuments (rejects -> OUT/rejects)
          -> QualityHistogram(OUT/histograms) -> writer(OUT/scored)
  select  reader(OUT/scored) -> QualityFilter(k | min_quality; dropped -> OUT/dropped) -> writer(OUT/kept)
Logs, per-task stats and completion markers go to OUT/logs/{score,select}; after a local run
the per-task stats of each stage are merged (datatrove's merge_stats) into
OUT/logs/<stage>/merged_stats.json, and the last line printed is a JSON summary.

A rerun with the same OUT resumes: completed tasks are skipped, the others rerun whole
(their files are overwritten), with any --workers; --tasks must stay the same. datatrove
shards by input file, so a single input file needs --split N (N >= --tasks): its lines
are copied into N files under OUT/input first (once; malformed lines stay, to be counted).
"""
from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile


def split_lines(path: str, folder: str, parts: int) -> str:
  """Copies the lines of `path` into `parts` files of consecutive lines, part-IIIII.jsonl
  under `folder` (done once: a marker file records it). Returns the folder."""
  marker = folder.rstrip("/") + ".split-done"  # beside the folder: the reader reads every file in it
  if os.path.exists(marker):
    return folder
  os.makedirs(folder, exist_ok=True)
  with open(path, "rb") as f:
    lines = f.readlines()
  for p in range(parts):
    with open(os.path.join(folder, f"part-{p:05d}.jsonl"), "wb") as out:
      out.writelines(lines[p * len(lines) // parts:(p + 1) * len(lines) // parts])
  open(marker, "w").close()
  return folder


def writer(fmt: str, folder: str):
  """A datatrove writer of one file per task in `folder`: JSONL (gzip) or Parquet."""
  from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
  return JsonlWriter(folder) if fmt == "jsonl" else ParquetWriter(folder)


def options(args):
  """How each document is scored (jaxlab.scalingfilter.score.ScoreOptions) from the flags."""
  from jaxlab.scalingfilter.score import ScoreOptions
  return ScoreOptions(long_docs=args.long_docs, min_context=args.min_context, context=args.context,
                      boundaries=args.boundaries, dtype=args.dtype)


def pipelines(args) -> tuple[list, list]:
  """The steps of the score and the select stage."""
  from datatrove.pipeline.readers import JsonlReader, ParquetReader
  from datatrove.pipeline.writers import JsonlWriter

  from jaxlab.scalingfilter import DocumentReader, QualityFilter, QualityHistogram, ScoreDocuments
  out = lambda *p: os.path.join(args.output, *p)
  source = split_lines(args.input, out("input"), args.split) if args.split else args.input
  score = [DocumentReader(source, text_key=args.text_key, id_key=args.id_key, glob_pattern=args.glob),
           ScoreDocuments(args.small, args.large, batch_size=args.batch_docs, tokens_per_batch=args.tokens_per_batch,
                          options=options(args), exclusion_writer=JsonlWriter(out("rejects"))),
           QualityHistogram(out("histograms"), bin_width=args.bin_width),
           writer(args.format, out("scored"))]
  reader = JsonlReader if args.format == "jsonl" else ParquetReader
  select = [reader(out("scored")),
            QualityFilter(out("histograms"), k=args.k, min_quality=args.min_quality,
                          exclusion_writer=writer(args.format, out("dropped"))),
            writer(args.format, out("kept"))]
  return score, select


def check_premise(args) -> None:
  """Once, before any task: the large model's perplexity on held-out text (--held-out, else
  the input's first --check-docs documents) must be the lower; exits otherwise (see
  jaxlab.scalingfilter.premise), unless --allow-worse-large."""
  from jaxlab.scalingfilter import premise, score as score_lib
  small, large = score_lib.load_meta_model(args.small), score_lib.load_meta_model(args.large)
  premise.check_or_exit(small, large, args.held_out or args.input, n=args.check_docs,
                        allow_worse_large=args.allow_worse_large, flag="--allow-worse-large",
                        text_field=args.text_key, id_field=args.id_key, tokens_per_batch=args.tokens_per_batch,
                        options=options(args))


def local_executors(args, score, select):
  """LocalPipelineExecutor: --tasks tasks on --workers processes."""
  from datatrove.executor import LocalPipelineExecutor
  first = LocalPipelineExecutor(score, tasks=args.tasks, workers=args.workers,
                                logging_dir=os.path.join(args.output, "logs", "score"))
  second = LocalPipelineExecutor(select, tasks=args.tasks, workers=args.workers, depends=first,
                                 logging_dir=os.path.join(args.output, "logs", "select"))
  return first, second


def slurm_executors(args, score, select):
  """SlurmPipelineExecutor: one array job per stage, one GPU per scoring task."""
  from datatrove.executor import SlurmPipelineExecutor
  common = dict(tasks=args.tasks, time=args.time, partition=args.partition, cpus_per_task=args.cpus_per_task,
                venv_path=os.path.join(sys.prefix, "bin", "activate"), mem_per_cpu_gb=args.mem_per_cpu_gb)
  first = SlurmPipelineExecutor(score, job_name="scalingfilter_score", gpus_per_task=1,
                                logging_dir=os.path.join(args.output, "logs", "score"), **common)
  second = SlurmPipelineExecutor(select, job_name="scalingfilter_select", depends=first,
                                 logging_dir=os.path.join(args.output, "logs", "select"), **common)
  return first, second


def stand_in_sbatch(folder: str) -> str:
  """A `sbatch` for --dry-run: prints the script it is given and a made-up job id."""
  path = os.path.join(folder, "sbatch")
  with open(path, "w") as f:
    f.write('#!/bin/bash\necho "# sbatch $*" >&2\ncat "${@: -1}" >&2\necho "Submitted batch job $((1000 + RANDOM))"\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
  return folder


def merge_stats(logging_dir: str) -> list:
  """Every task's stats of a stage (not only this run's) merged by datatrove's merge_stats."""
  merged = os.path.join(logging_dir, "merged_stats.json")
  subprocess.run([sys.executable, "-m", "datatrove.tools.merge_stats", os.path.join(logging_dir, "stats"),
                  "-o", merged], check=True, capture_output=True)
  with open(merged) as f:
    return json.load(f)


def summary(score_stats: list, select_stats: list) -> dict:
  """Counts from the merged stats: documents read, scored, rejected by reason, kept, dropped."""
  count = lambda v: v["total"] if isinstance(v, dict) else v  # a bare count is saved as an int
  total = lambda stats, key: int(count(stats.get(key, 0)))
  scored = next(s["stats"] for s in score_stats if s["name"].endswith("ScalingFilter score"))
  selected = next(s["stats"] for s in select_stats if s["name"].endswith("ScalingFilter select"))
  return {"documents": total(scored, "total"), "scored": total(scored, "forwarded"),
          "rejected": {k.removeprefix("dropped_"): total(scored, k) for k in sorted(scored)
                       if k.startswith("dropped_")},
          "tokens": total(scored, "tokens"), "kept": total(selected, "forwarded"),
          "dropped": total(selected, "dropped")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", required=True, help="small meta-model: GPT-2 folder or jaxlab LM run")
  p.add_argument("--large", required=True)
  p.add_argument("--input", required=True, help="a folder of .jsonl/.jsonl.gz/.parquet files, or one file with --split")
  p.add_argument("--output", required=True)
  p.add_argument("--text-key", default="text")
  p.add_argument("--id-key", default="id")
  p.add_argument("--glob", default=None, help="only input files matching this pattern")
  p.add_argument("--split", type=int, default=0, help="split one input file into this many files first")
  p.add_argument("--tasks", type=int, default=4)
  p.add_argument("--workers", type=int, default=-1, help="local processes (-1: one per task)")
  p.add_argument("--k", type=float, default=None, help="keep the top k%% by quality factor (default 70)")
  p.add_argument("--min-quality", type=float, default=None, help="keep documents with d >= this instead")
  p.add_argument("--bin-width", type=float, default=1e-4, help="histogram bin width in log d")
  p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
  p.add_argument("--batch-docs", type=int, default=256)
  p.add_argument("--tokens-per-batch", type=int, default=16384)
  p.add_argument("--long-docs", choices=("window", "truncate", "stride"), default="window")
  p.add_argument("--min-context", type=int, default=0, help="stride: least context per prediction (default C/2)")
  p.add_argument("--context", type=int, default=0, help="tokens per window (default: the pair's training length)")
  p.add_argument("--boundaries", choices=("eos", "none"), default="eos",
                 help="eos: an EOS before and after each text, as in training; none: the text alone")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--held-out", nargs="+", default=None, help="text the pair did not train on (default: the input)")
  p.add_argument("--check-docs", type=int, default=256, help="held-out texts for the premise check")
  p.add_argument("--allow-worse-large", action="store_true",
                 help="run even when the large model's held-out perplexity is not the lower (warns)")
  p.add_argument("--executor", choices=("local", "slurm"), default="local")
  p.add_argument("--partition", default="gpu")
  p.add_argument("--time", default="04:00:00")
  p.add_argument("--cpus-per-task", type=int, default=8)
  p.add_argument("--mem-per-cpu-gb", type=int, default=4)
  p.add_argument("--dry-run", action="store_true", help="slurm: write and print the scripts, submit nothing")
  args = p.parse_args(argv)
  if args.k is None and args.min_quality is None:
    args.k = 70.0
  if args.split and args.split < args.tasks:
    p.error(f"--split {args.split} < --tasks {args.tasks}: some tasks would get no file")
  if args.dry_run and args.executor != "slurm":
    p.error("--dry-run is for --executor slurm")
  check_premise(args)
  score, select = pipelines(args)
  if args.executor == "slurm":
    first, second = slurm_executors(args, score, select)
    with tempfile.TemporaryDirectory() as bin_dir:
      if args.dry_run:
        os.environ["PATH"] = stand_in_sbatch(bin_dir) + os.pathsep + os.environ["PATH"]
      second.run()  # submits the score job first (its dependency), then this one
    print(json.dumps({"submitted": [first.job_id, second.job_id], "dry_run": args.dry_run,
                      "scripts": [os.path.join(args.output, "logs", s, "launch_script.slurm")
                                  for s in ("score", "select")]}))
    return 0
  first, second = local_executors(args, score, select)
  second.run()
  print(json.dumps(summary(merge_stats(first.logging_dir.path), merge_stats(second.logging_dir.path))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
