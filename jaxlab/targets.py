"""GPUs this host does not have: compile a train step for an H100 or H200 from a CPU machine.

XLA compiles for a GPU from a description of it alone (an ahead-of-time, "deviceless"
compile). `devices("h100")` gives the devices of a one-GPU H100 topology, which
`sharding.make_mesh` and `jaxlab.train.loop.compile_step` take like local ones:

  mesh = sharding.make_mesh(opts.mesh, targets.devices("h100"))
  compiled = loop.compile_step(task, opts, mesh, batch, targets.CUBLAS)
  compiled.compiled.memory_analysis()          # the GPU program's argument/temporary bytes
  targets.custom_calls(compiled.compiled.as_text())[targets.FP8_GEMM]   # FP8 cuBLASLt GEMMs

Nothing runs and nothing needs a GPU or a CUDA driver, only JAX's CUDA PJRT plugin
(`pip install 'jaxlab[gpu-aot]'`), with JAX_PLATFORMS not asking for CUDA (e.g. "cpu"). The
program is the one the GPU would run except where XLA autotunes on the device: here it takes
its defaults, which send GEMMs to Triton. `CUBLAS` (Triton GEMMs off) sends every GEMM to
cuBLAS/cuBLASLt, which is what autotuning chose for the FP8 GEMMs on the H200 we measured
(bench/results/fp8_speed_h200.md: flax's step, 26 FP8 cuBLASLt calls).
"""
from __future__ import annotations

import re

from jaxlab import hlo_text

# The GPU descriptions XLA compiles against (xla GpuTargetConfigProto, text format): the
# figures its cost models and code generation read, from NVIDIA's data sheets.
_HOPPER = """
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{name}"
"""
TARGETS = {
    "h100": _HOPPER.format(name="NVIDIA H100 80GB HBM3", memory=84929347584, bandwidth=3352320000000),
    "h200": _HOPPER.format(name="NVIDIA H200", memory=150754820096, bandwidth=4800000000000),
}

FP8_GEMM = "__cublas$lt$matmul$f8"  # the custom call of an FP8 cuBLASLt GEMM in optimized GPU HLO
CUBLAS = {"xla_gpu_enable_triton_gemm": False}  # compile options: every GEMM to cuBLAS(Lt)


class TargetError(RuntimeError):
  """A GPU target that cannot be compiled for here; the message says what to install."""


def devices(target: str, count: int = 1) -> list:
  """The devices of `count` GPUs of kind `target` (a key of TARGETS) on one host, for
  compiling only."""
  if target not in TARGETS:
    raise ValueError(f"unknown GPU target {target!r}; known: {sorted(TARGETS)}")
  from jax.experimental import topologies

  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=TARGETS[target],
                                            topology=f"1x1x{count}")
  except (NotImplementedError, RuntimeError) as e:
    raise TargetError(f"compiling for {target} needs JAX's CUDA plugin (no GPU needed): "
                      f"pip install 'jaxlab[gpu-aot]' ({type(e).__name__}: {e})") from None
  return list(topology.devices)


def is_gpu(device) -> bool:
  """Whether `device` is a GPU, local or a target's ("gpu" for a local one, "cuda" for a
  topology's)."""
  return device.platform in ("gpu", "cuda", "rocm")


def custom_calls(optimized_hlo: str) -> dict[str, int]:
  """custom_call_target -> count in an optimized HLO module (`compiled.as_text()`)."""
  counts: dict[str, int] = {}
  for target in re.findall(r'custom_call_target="([^"]+)"', optimized_hlo):
    counts[target] = counts.get(target, 0) + 1
  return counts


# ------------------------------------------------------------------ memory traffic estimate

# ops that run no kernel of their own (or whose kernels are counted where they are called)
_NO_KERNEL = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call", "conditional",
              "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}


def _fusion_io(fused: dict) -> tuple[dict[int, int], int | None]:
  """What a fused computation touches of its operands and result: {parameter index: bytes}
  for parameters it only reads through dynamic-slices (the slices) or only updates in place
  (0), and the bytes it writes when its result is dynamic-update-slices (the updates; else None)."""
  users: dict[str, list[str]] = {}
  for ins in fused.values():
    for o in ins.operands:
      users.setdefault(o, []).append(ins.name)

  def through_bitcasts(name):  # (source, user) pairs past any bitcasts
    out = []
    for u in users.get(name, []):
      out += through_bitcasts(u) if fused[u].opcode == "bitcast" else [(name, u)]
    return out

  reads = {}
  for ins in fused.values():
    if ins.opcode != "parameter":
      continue
    uses = through_bitcasts(ins.name)
    if uses and all(fused[u].opcode == "dynamic-slice" and fused[u].operands[0] == src for src, u in uses):
      reads[int(ins.operands[0])] = sum(hlo_text.nbytes(fused[u].type) for _, u in uses)
    elif uses and all(fused[u].opcode == "dynamic-update-slice" and fused[u].operands[0] == src for src, u in uses):
      reads[int(ins.operands[0])] = 0
  root = next(ins for ins in fused.values() if ins.root)
  outs = [fused[o] for o in root.operands] if root.opcode == "tuple" else [root]
  if all(o.opcode == "dynamic-update-slice" for o in outs):
    return reads, sum(hlo_text.nbytes(fused[o.operands[1]].type) for o in outs)
  return reads, None


def memory_traffic(optimized_hlo: str) -> dict[str, int]:
  """Bytes a compiled GPU program (`compiled.as_text()`) reads and writes in device memory in
  one run, by the kernels' JAX name scopes (their `op_name` metadata, e.g.
  ".../attn/query/Fp8DotGeneral_0/dot_general"; "" where there is none): sum the values for the
  total, group them by scope to see where the traffic is. See `kernel_traffic`."""
  traffic: dict[str, int] = {}
  for _, scope, moved in kernel_traffic(optimized_hlo):
    traffic[scope] = traffic.get(scope, 0) + moved
  return traffic


def kernel_traffic(optimized_hlo: str) -> list[tuple[str, str, int]]:
  """(kind, scope, bytes) for each kernel of a compiled GPU program, estimated: each kernel (a
  fusion, library call or other op outside fused computations) reads its operands and writes
  its result once; kernels in a while loop count once per iteration (XLA's known trip count);
  an operand a fusion only dynamic-slices (one layer of a stacked array) counts as the slices,
  a result it only updates in place as the updates; a library call's s8 workspace is not
  counted. Caches and re-reads inside a kernel are not modelled: a lower bound on a kernel's
  traffic, exact for streaming kernels. `kind` is the opcode, or a custom call's target (e.g.
  `FP8_GEMM`); `scope` the kernel's op_name."""
  comps = hlo_text.parse(optimized_hlo)
  types = {ins.name: ins.type for comp in comps.values() for ins in comp.values()}
  entry = hlo_text.entry(optimized_hlo)
  runs, pending = {entry: 1}, [entry]
  while pending:  # while bodies (nested ones too) run trip count x their caller's runs
    caller = pending.pop()
    for ins in comps[caller].values():
      body = ins.attribute(r"body=%?([\w.\-]+)") if ins.opcode == "while" else None
      if body and body not in runs:
        runs[body] = runs[caller] * int(ins.attribute(r'"known_trip_count":\{"n":"(\d+)"\}') or 1)
        pending.append(body)
  kernels = []
  for comp, count in runs.items():
    for ins in comps[comp].values():
      if ins.opcode in _NO_KERNEL:
        continue
      reads = [hlo_text.nbytes(types.get(o, "")) for o in ins.operands]
      written = hlo_text.nbytes(ins.type)
      if ins.opcode == "fusion":
        sliced, updates = _fusion_io(comps[ins.attribute(r"calls=%?([\w.\-]+)")])
        reads = [sliced.get(i, b) for i, b in enumerate(reads)]
        written = written if updates is None else updates
      elif ins.opcode == "dynamic-slice":
        reads = [written]
      elif ins.opcode == "dynamic-update-slice":  # in place: reads and writes the update only
        written = hlo_text.nbytes(types.get(ins.operands[1], ""))
        reads = [written]
      elif ins.opcode == "custom-call":
        written -= sum(int(d) for d in re.findall(r"\bs8\[(\d+)\]", ins.type))  # the workspace
      kind = ins.attribute(r'custom_call_target="([^"]+)"') if ins.opcode == "custom-call" else ins.opcode
      kernels.append((kind, ins.attribute(r'op_name="([^"]*)"') or "", (sum(reads) + written) * count))
  return kernels
