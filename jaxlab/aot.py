"""Ahead-of-time check: compile a config's train step for a device count and mesh, train nothing.

  python -m jaxlab.aot --config configs/quickstart.py --devices 8 --mesh "(('data', 4), ('model', 2))" \
      sharding.layout=tp [key=value ...]

The trainer runs as it would in `jaxlab.main` (same data preparation, model, partition
rules and jitted step: `jaxlab.train.loop.compile_only`) up to the point where the loop
would start; there the step is lowered with abstract inputs and compiled by XLA for the
mesh. On simulated CPU devices (`--devices N`) this shows before a job is queued whether
the partition rules fit the parameters (a wrong rule is reported with the parameter it
failed on) and how much memory each device needs: parameters, optimizer state and the
batch (the compiled program's input shardings), and temporaries (activations kept for
the backward pass and XLA's workspace, from `compiled.memory_analysis()`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any, Sequence


def _bytes(leaf, sharding) -> int:
  """Bytes one device holds of `leaf` under `sharding`."""
  return math.prod(sharding.shard_shape(tuple(leaf.shape))) * leaf.dtype.itemsize


def _tree_bytes(tree, shardings) -> int:
  import jax
  return sum(jax.tree.leaves(jax.tree.map(_bytes, tree, shardings)))


def check(config_spec: str, overrides: Sequence[str] = (), workdir: str | None = None) -> dict[str, Any]:
  """Compile the train step the config describes; returns the figures `report` prints.
  Raises ConfigError/ShardingError (naming the key or the array) on a bad config."""
  import jax

  from jaxlab import config as config_lib, main as main_lib, sharding
  from jaxlab.train import loop

  cfg = config_lib.load(config_spec, overrides)
  module = main_lib.trainer_module(cfg)
  with tempfile.TemporaryDirectory(prefix="jaxlab_aot_") as tmp:
    with loop.compile_only() as out:
      module.train_and_evaluate(cfg, workdir or tmp)
  setup, compiled, mesh = out["setup"], out["compiled"], out["mesh"]
  state = setup.abstract_state
  state_sh = setup.state_shardings
  params = []
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                              jax.tree.leaves(state_sh.params)):
    params.append(dict(name=sharding.path_name(path), shape=tuple(leaf.shape), dtype=str(leaf.dtype),
                       spec=str(tuple(sh.spec)), device_shape=tuple(sh.shard_shape(tuple(leaf.shape))),
                       bytes=_bytes(leaf, sh)))
  mem = compiled.memory_analysis()
  return dict(
      config=config_spec, mesh=dict(mesh.shape), devices=mesh.size, platform=jax.default_backend(),
      layout=cfg.sharding.layout, params=params,
      num_params=sum(math.prod(p["shape"]) for p in params),
      per_device=dict(
          parameters=_tree_bytes(state.params, state_sh.params),
          optimizer=_tree_bytes(state.opt_state, state_sh.opt_state),
          model_state=_tree_bytes(state.model_state, state_sh.model_state),
          batch=_tree_bytes(out["batch"], jax.tree.map(lambda b: b.sharding, out["batch"])),
          arguments=getattr(mem, "argument_size_in_bytes", 0),
          outputs=getattr(mem, "output_size_in_bytes", 0),
          aliased=getattr(mem, "alias_size_in_bytes", 0),
          temporaries=getattr(mem, "temp_size_in_bytes", 0),
          code=getattr(mem, "generated_code_size_in_bytes", 0),
      ))


def _fmt(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:8.2f} {unit}"
  return f"{n:8d} B  "


def report(result: dict) -> str:
  m, d = result["per_device"], result["per_device"]
  mesh = " x ".join(f"{k}={v}" for k, v in result["mesh"].items())
  # Donated state buffers are reused for the new state, so outputs that alias inputs
  # cost nothing extra.
  peak = m["arguments"] + m["temporaries"] + max(m["outputs"] - m["aliased"], 0)
  lines = [f"AOT check of {result['config']}: {result['devices']} {result['platform']} devices, mesh {mesh}, "
           f"layout {result['layout']}, {result['num_params']:,} parameters",
           "", "parameters (global shape -> per-device shape, partition spec):"]
  width = max(len(p["name"]) for p in result["params"])
  for p in result["params"]:
    lines.append(f"  {p['name']:<{width}}  {str(p['shape']):<18} -> {str(p['device_shape']):<18} "
                 f"{p['spec']:<24} {_fmt(p['bytes'])}")
  lines += ["", "per-device memory of the compiled train step:",
            f"  parameters        {_fmt(d['parameters'])}",
            f"  optimizer state   {_fmt(d['optimizer'])}",
            *([f"  model state       {_fmt(d['model_state'])}"] if d["model_state"] else []),
            f"  batch             {_fmt(d['batch'])}",
            f"  activations/temp  {_fmt(d['temporaries'])}   (XLA temporaries: saved activations, workspace)",
            f"  all arguments     {_fmt(d['arguments'])}",
            f"  outputs           {_fmt(d['outputs'])}   ({_fmt(d['aliased']).strip()} reuse donated inputs)",
            f"  estimated peak    {_fmt(peak)}",
            *([f"  generated code    {_fmt(d['code'])}"] if d["code"] else [])]
  return "\n".join(lines)


def _set_device_count(devices: int) -> None:
  """Simulated CPU devices; only possible before JAX starts its backend."""
  from jaxlab import distributed

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = distributed.with_device_count(os.environ.get("XLA_FLAGS", ""), devices)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxlab.aot", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/X.py[:ARG]")
  parser.add_argument("--mesh", default=None, help="mesh override, e.g. \"(('data', 4), ('model', 2))\"")
  parser.add_argument("--devices", type=int, default=0, help="simulate this many CPU devices")
  parser.add_argument("--workdir", default=None,
                      help="reuse a run's prepared data and tokenizer (default: a temporary folder)")
  parser.add_argument("overrides", nargs="*", help="key=value config overrides")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.devices:
    _set_device_count(args.devices)

  import jax

  from jaxlab import config as config_lib
  from jaxlab.sharding import ShardingError

  if args.devices and jax.device_count() != args.devices:
    print(f"--devices {args.devices}: this process already runs JAX with {jax.device_count()} devices "
          f"(XLA_FLAGS is read once, when JAX starts)", file=sys.stderr)
    return 2
  overrides = list(args.overrides) + ([f"mesh={args.mesh}"] if args.mesh else [])
  try:
    result = check(args.config, overrides, args.workdir)
  except ShardingError as e:
    print(f"sharding error: {e}", file=sys.stderr)
    return 2
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  print(report(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
