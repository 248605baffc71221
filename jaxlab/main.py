"""python -m jaxlab.main --config configs/X.py[:ARG] --workdir DIR [key=value ...]"""
from __future__ import annotations

import argparse
import sys

from jaxlab import config as config_lib
from jaxlab import distributed, trainers
from jaxlab.sharding import ShardingError
from jaxlab.train.loop import NonFiniteError


def parse_args(argv):
  """--config, --workdir and the key=value overrides."""
  parser = argparse.ArgumentParser(prog="python -m jaxlab.main", description=__doc__)
  parser.add_argument("--config", required=True, help="configs/X.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and plots go")
  parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=100")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  """Run the config's trainer; exit status 0 done, 2 config error, 3 stopped on NaN/Inf."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:  # joins the other processes (if the environment names any) before devices are used
    distributed.initialize()
  except distributed.DistributedError as e:
    print(f"distributed setup error: {e}", file=sys.stderr)
    return 2
  try:
    cfg = config_lib.load(args.config, args.overrides)
    module = trainers.get(cfg.trainer)
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  try:
    summary = module.train_and_evaluate(cfg, args.workdir)
  except (config_lib.ConfigError, ShardingError) as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  except NonFiniteError as e:
    print(f"stopped: {e}", file=sys.stderr)
    return 3
  import jax
  if jax.process_index() == 0:  # one report per run, not one per process
    print(module.report(summary), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
