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
