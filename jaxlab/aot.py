"""Ahead-of-time check: compile every stage of a config's trainer for a device count and
mesh, from shapes alone; nothing is trained and no data is prepared.

  python -m jaxlab.aot --config configs/quickstart.py --devices 8 --mesh "(('data', 4), ('model', 2))" \
      sharding.layout=tp [key=value ...]

Each trainer declares its stages (`stages(cfg)`: the LM and classify trainers one, align
three — pretrain, aesthetic, finetune — and scalingfilter its meta-model pair — small,
large), each a Task with its Options and the batch's shapes; every stage's train step is
lowered and compiled by XLA for the mesh (`jaxlab.train.loop.compile_step`, the step
`run` trains). On simulated CPU devices (`--devices N`) this shows before a job is queued
whether the partition rules fit the parameters (a wrong rule is reported naming the stage
and the parameter) and how much memory each device needs: parameters, optimizer state and
the batch (the compiled program's input shardings), and temporaries (activations kept for
the backward pass and XLA's workspace, from `compiled.memory_analysis()`). Each stage
also reports how many dots of its lowered step take FP8 operands in the form XLA's GPU GEMM
rewriter turns into FP8 GEMMs (`jaxlab.fp8.hlo`); `--dump-hlo DIR` writes that HLO text.
`--xla-option KEY=VALUE` (repeatable) passes an XLA option to the compiles, e.g.
`xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`: XLA's default CPU scheduler
orders for concurrency and can hold more temporaries than a memory-aware schedule needs
(`bench/fp8_memory.py` measures under the memory-optimized one).

`--target h100` (or `h200`) compiles for that GPU from this host instead (`jaxlab.targets`:
XLA's ahead-of-time GPU compile, needs `pip install 'jaxlab[gpu-aot]'`, no GPU), `--devices
N` GPUs of it: memory is then the GPU program's, and each stage also reports how many of its
GEMMs became FP8 cuBLASLt calls (GEMMs go to cuBLAS, `targets.CUBLAS`, unless
`--xla-option` says otherwise) and the step's memory traffic per device, estimated from its
kernels (`targets.memory_traffic`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence


class StageError(ValueError):
  """A stage that does not compile for the mesh; the message names the stage first."""


def _bytes(leaf, sharding) -> int:
  """Bytes one device holds of `leaf` under `sharding`."""
  return math.prod(sharding.shard_shape(tuple(leaf.shape))) * leaf.dtype.itemsize


def _tree_bytes(tree, shardings) -> int:
  import jax
  return sum(jax.tree.leaves(jax.tree.map(_bytes, tree, shardings)))


def _platform(mesh) -> str:
  """"cpu", or the GPU's kind when compiled for one (`--target`)."""
  from jaxlab import targets

  device = mesh.devices.flat[0]
  return device.device_kind if targets.is_gpu(device) else device.platform


def _figures(stage, out, mesh) -> dict[str, Any]:
  import jax

  from jaxlab import sharding

  setup, compiled = out.setup, out.compiled
  state, state_sh = setup.abstract_state, setup.state_shardings
  params = []
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                              jax.tree.leaves(state_sh.params)):
    params.append(dict(name=sharding.path_name(path), shape=tuple(leaf.shape), dtype=str(leaf.dtype),
                       spec=str(tuple(sh.spec)), device_shape=tuple(sh.shard_shape(tuple(leaf.shape))),
                       bytes=_bytes(leaf, sh)))
  mem = compiled.memory_analysis()
  return dict(
      stage=stage.name, mesh=dict(mesh.shape), devices=mesh.size, platform=_platform(mesh),
      layout=stage.options.layout, params=params, num_params=sum(math.prod(p["shape"]) for p in params),
      per_device=dict(
          parameters=_tree_bytes(state.params, state_sh.params),
          optimizer=_tree_bytes(state.opt_state, state_sh.opt_state),
          model_state=_tree_bytes(state.model_state, state_sh.model_state),
          batch=_tree_bytes(out.batch, jax.tree.map(lambda b: b.sharding, out.batch)),
          arguments=getattr(mem, "argument_size_in_bytes", 0),
          outputs=getattr(mem, "output_size_in_bytes", 0),
          aliased=getattr(mem, "alias_size_in_bytes", 0),
          temporaries=getattr(mem, "temp_size_in_bytes", 0),
          code=getattr(mem, "generated_code_size_in_bytes", 0),
      ))


def check(config_spec: str, overrides: Sequence[str] = (), dump_hlo: str | None = None,
          compiler_options: dict | None = None, devices: Sequence[Any] | None = None) -> list[dict[str, Any]]:
  """Compile every stage's train step the config describes; one dict of figures per stage
  (what `report` prints), with how many of its dots are FP8 GEMMs (`jaxlab.fp8.hlo`) and,
  compiled for a GPU, how many became FP8 cuBLASLt calls (`fp8_gemms`).
  With `dump_hlo` (a folder), each stage's lowered, pre-optimisation HLO text is written to
  `dump_hlo/<stage>.hlo.txt`; `compiler_options` go to XLA; `devices` (default this host's,
  e.g. `targets.devices("h100", 8)`) are the mesh's. Raises ConfigError naming the key, or
  StageError naming the stage and the parameter a partition rule does not fit."""
  from jaxlab import config as config_lib, sharding, targets, trainers
  from jaxlab.fp8 import hlo
  from jaxlab.train import loop

  cfg = config_lib.load(config_spec, overrides)
  module = trainers.get(cfg.trainer)
  results = []
  for stage in module.stages(cfg):
    mesh = sharding.make_mesh(stage.options.mesh, devices)
    try:
      out = loop.compile_step(stage.task, stage.options, mesh, stage.batch, compiler_options)
    except sharding.ShardingError as e:
      raise StageError(f"stage {stage.name}: {e}") from None
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"stage {stage.name}: {e}") from None
    text = out.lowered.as_text(dialect="hlo")
    path = os.path.join(dump_hlo, f"{stage.name}.hlo.txt") if dump_hlo else None
    if path:
      os.makedirs(dump_hlo, exist_ok=True)
      with open(path, "w") as f:
        f.write(text)
    gpu_figures = dict(fp8_gemms=None, traffic=None)
    if targets.is_gpu(mesh.devices.flat[0]):
      optimized = out.compiled.as_text()
      gpu_figures = dict(fp8_gemms=targets.custom_calls(optimized).get(targets.FP8_GEMM, 0),
                         traffic=sum(targets.memory_traffic(optimized).values()))
    results.append(dict(_figures(stage, out, mesh), config=config_spec, dots=hlo.fp8_dots(text).summary(),
                        hlo_path=path, **gpu_figures))
  return results


def _fmt(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:8.2f} {unit}"
  return f"{n:8d} B  "


def report(result: dict) -> str:
  """One stage's figures as text: its parameters with their shardings, then memory."""
  m, d = result["per_device"], result["per_device"]
  mesh = " x ".join(f"{k}={v}" for k, v in result["mesh"].items())
  # Donated state buffers are reused for the new state, so outputs that alias inputs
  # cost nothing extra.
  peak = m["arguments"] + m["temporaries"] + max(m["outputs"] - m["aliased"], 0)
  lines = [f"stage {result['stage']}: compiled {result['config']} for {result['devices']} {result['platform']} "
           f"devices, mesh {mesh}, layout {result['layout']}, {result['num_params']:,} parameters",
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
  if result.get("dots"):
    lines += ["", f"dots of the lowered step: {result['dots']}"]
  if result.get("fp8_gemms") is not None:
    lines.append(f"FP8 cuBLASLt GEMMs in the compiled step: {result['fp8_gemms']}")
  if result.get("traffic") is not None:
    lines.append(f"memory traffic of one step, estimated from its kernels: {_fmt(result['traffic']).strip()} per device")
  if result.get("hlo_path"):
    lines.append(f"lowered HLO written to {result['hlo_path']}")
  return "\n".join(lines)


def _set_device_count(devices: int) -> None:
  """Simulated CPU devices; only possible before JAX starts its backend."""
  from jaxlab import distributed

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = distributed.with_device_count(os.environ.get("XLA_FLAGS", ""), devices)


def xla_options(items: Sequence[str]) -> dict[str, Any]:
  """KEY=VALUE strings -> XLA compiler options: true/false as booleans, integers as ints."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--xla-option {item!r}: expected KEY=VALUE")
    low = value.lower()
    out[key] = low == "true" if low in ("true", "false") else int(value) if value.lstrip("-").isdigit() else value
  return out


def main(argv: Sequence[str] | None = None) -> int:
  """Compile and report every stage; exit status 2 on a config or sharding error."""
  parser = argparse.ArgumentParser(prog="python -m jaxlab.aot", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/X.py[:ARG]")
  parser.add_argument("--mesh", default=None, help="mesh override, e.g. \"(('data', 4), ('model', 2))\"")
  parser.add_argument("--devices", type=int, default=0,
                      help="simulate this many CPU devices (with --target: this many GPUs of it)")
  parser.add_argument("--target", default=None, help="compile for this GPU from this host (h100, h200; needs "
                      "jaxlab[gpu-aot])")
  parser.add_argument("--dump-hlo", default=None, metavar="DIR",
                      help="write each stage's lowered (pre-optimisation) HLO text to DIR/<stage>.hlo.txt")
  parser.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                      help="an XLA compiler option for the compiles, e.g. "
                           "xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED (repeatable)")
  parser.add_argument("overrides", nargs="*", help="key=value config overrides")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    options = xla_options(args.xla_option)
  except ValueError as e:
    print(str(e), file=sys.stderr)
    return 2
  if args.target:  # nothing runs: JAX itself stays on this host's CPU
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  elif args.devices:
    _set_device_count(args.devices)

  import jax

  from jaxlab import config as config_lib, targets

  devices = None
  if args.target:
    try:
      devices = targets.devices(args.target, args.devices or 1)
    except (ValueError, targets.TargetError) as e:
      print(f"--target {args.target}: {e}", file=sys.stderr)
      return 2
    options = {**targets.CUBLAS, **options}
  elif args.devices and jax.device_count() != args.devices:
    print(f"--devices {args.devices}: this process already runs JAX with {jax.device_count()} devices "
          f"(XLA_FLAGS is read once, when JAX starts)", file=sys.stderr)
    return 2
  overrides = list(args.overrides) + ([f"mesh={args.mesh}"] if args.mesh else [])
  try:
    results = check(args.config, overrides, dump_hlo=args.dump_hlo, compiler_options=options or None,
                    devices=devices)
  except StageError as e:
    print(f"sharding error in {e}", file=sys.stderr)
    return 2
  except config_lib.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  print("\n\n".join(report(r) for r in results), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
