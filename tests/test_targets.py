"""Train steps compiled for an H100 from this host (jaxlab.targets, XLA's ahead-of-time GPU
compile): the LM trainer's real step, through `lm.stages` and `fp8.apply`.

- Every FP8 level's GEMMs are FP8 cuBLASLt GEMMs in the GPU program: as many as flax's
  fp8_ops makes of the same model, and as many as `jaxlab.fp8.hlo` finds in FP8 form in the
  lowered step (the CPU-side check agrees with XLA's GPU GEMM rewriter).
- The FP8 levels' memory on the GPU is FP8-LM's: state plus temporaries at batch 0 within 10%
  of its 16 / 11 / 6 / 7 bytes per parameter at the 1.3B shape.
- The GPU program's traffic: every FP8 GEMM writes BF16, the optimizer writes each matrix in
  one pass (no layer write-backs), the steady FP8 GEMM reads its activation once.

Marked gpu_aot (`make gpu-aot`: a venv with JAX's CUDA plugin; no GPU needed); skipped where
the plugin is absent, where the test below checks the error that says what to install.
"""
import functools
import re

import jax
import pytest

from jaxlab import config as config_lib, hlo_text, sharding, targets
from jaxlab.fp8 import hlo, memory
from jaxlab.train import loop
from jaxlab.trainers import lm


def _plugin() -> bool:
  try:
    targets.devices("h100")
  except targets.TargetError:
    return False
  return True


HAS_PLUGIN = _plugin()
needs_plugin = pytest.mark.skipif(not HAS_PLUGIN, reason="JAX's CUDA plugin is absent (pip install 'jaxlab[gpu-aot]')")


def _compiled(level: str, size: str, batch: int, seq: int, vocab: int, options=targets.CUBLAS):
  cfg = config_lib.load(f"configs/fp8/gpt.py:{level},{size}", [
      f"train.seq_len={seq}", f"train.batch_size={batch}", "tokenizer.path=", f"tokenizer.vocab_size={vocab}",
      'mesh=(("data", 1), ("model", 1))'])
  (stage,) = lm.stages(cfg)
  mesh = sharding.make_mesh(stage.options.mesh, targets.devices("h100"))
  return stage, loop.compile_step(stage.task, stage.options, mesh, stage.batch, options)


@functools.cache
def _one_h100() -> jax.sharding.NamedSharding:
  # one topology for all: arguments on devices of two topologies do not compile together
  return jax.sharding.NamedSharding(jax.sharding.Mesh(targets.devices("h100")[:1], ("x",)), jax.sharding.PartitionSpec())


def _on_h100(shape, dtype=jax.numpy.float32) -> jax.ShapeDtypeStruct:
  """An array of `shape` on one H100 of the target (a compile's argument; nothing is made)."""
  return jax.ShapeDtypeStruct(shape, dtype, sharding=_one_h100())


def test_an_unknown_target_is_named():
  with pytest.raises(ValueError, match="unknown GPU target 'a100'.*h100"):
    targets.devices("a100")


@pytest.mark.skipif(HAS_PLUGIN, reason="the CUDA plugin is installed")
def test_without_the_plugin_the_error_says_what_to_install():
  with pytest.raises(targets.TargetError, match=r"pip install 'jaxlab\[gpu-aot\]'"):
    targets.devices("h100")


@pytest.mark.gpu_aot
@needs_plugin
def test_fp8_levels_compile_to_as_many_fp8_cublas_gemms_as_flax_on_h100():
  counts, lowered = {}, {}
  for level in ("none", "flax", "O1", "O2", "O3"):
    _, out = _compiled(level, "tiny", batch=2, seq=128, vocab=1024)
    counts[level] = targets.custom_calls(out.compiled.as_text()).get(targets.FP8_GEMM, 0)
    lowered[level] = len(hlo.fp8_dots(out.lowered.as_text(dialect="hlo")).fp8)
  # The block's 6 projections (query, key, value, attention out, MLP in, MLP out) x 3 GEMMs,
  # in the layer scan's body (once in the program, whatever the depth); the tied head (an
  # embedding attend) stays BF16 at every level, flax's included
  assert counts["none"] == 0, counts
  assert counts["flax"] == 18, counts
  for level in ("O1", "O2", "O3"):
    assert counts[level] == counts["flax"], (level, counts)
    assert lowered[level] == counts[level], (level, lowered, counts)


FP8_LM = {"none": 16, "O1": 11, "O2": 6, "O3": 7}  # FP8-LM Table: w + g + master + m + v, bytes/param


@pytest.mark.gpu_aot
@needs_plugin
@pytest.mark.parametrize("level", ["none", "O1", "O2", "O3"])
def test_measured_memory_on_h100_is_within_10_percent_of_fp8_lm(level):
  # Two batch sizes extrapolate the temporaries to batch 0 (activations grow with the batch;
  # gradients and optimizer intermediates do not), as bench/fp8_memory.py does.
  (stage, one), (_, two) = (_compiled(level, "1.3b", batch=b, seq=128, vocab=50257) for b in (1, 2))
  batch_bytes = lambda out: sum(b.size * b.dtype.itemsize for b in jax.tree.leaves(out.batch))
  m1, m2 = one.compiled.memory_analysis(), two.compiled.memory_analysis()
  state = m1.argument_size_in_bytes - batch_bytes(one)
  temp0 = 2 * m1.temp_size_in_bytes - m2.temp_size_in_bytes
  n = memory.account(one.setup.abstract_state, stage.task.precision)["params"]
  measured = (state + temp0) / n
  assert abs(measured / FP8_LM[level] - 1) <= 0.10, f"{level}: {measured:.2f} bytes/param vs FP8-LM's {FP8_LM[level]}"


@pytest.mark.gpu_aot
@needs_plugin
def test_aot_entry_point_compiles_a_config_for_h100(capsys):
  from jaxlab import aot

  assert aot.main(["--config", "configs/fp8/gpt.py:O2,toy", "--target", "h100", "tokenizer.path=",
                   "tokenizer.vocab_size=512", "train.seq_len=64", "train.batch_size=2"]) == 0
  out = capsys.readouterr().out
  assert "for 1 NVIDIA H100 80GB HBM3 devices" in out, out[:500]
  assert "FP8 cuBLASLt GEMMs in the compiled step: 18" in out, out[-800:]
  assert re.search(r"memory traffic of one step, estimated from its kernels: +[\d.]+ [MG]iB per device", out)
  assert aot.main(["--config", "configs/fp8/gpt.py:O2,toy", "--target", "a100"]) == 2
  assert "unknown GPU target 'a100'" in capsys.readouterr().err


FP8_CALL = re.compile(r"= \((\w+)\[[^\]]*\]\{[^}]*\}, s8\[\d+\]\{0\}\) custom-call\([^)]*\), "
                      r"custom_call_target=\"__cublas\$lt\$matmul\$f8\"")


@pytest.mark.gpu_aot
@needs_plugin
def test_fp8_gemms_write_the_compute_dtype_on_h100():
  # A forward or dgrad GEMM writes activations (tokens x features): in BF16 straight from
  # cuBLASLt, as flax's do, not FP32 then a pass converting it. The weight gradients too (6 of
  # the 18), as MS-AMP's: BF16, then cast once to E4M3 with their own scale (an FP32 output
  # would be written and read twice at twice the bytes).
  outputs = {}
  for level in ("flax", "O2"):
    _, out = _compiled(level, "tiny", batch=2, seq=128, vocab=1024)
    found = FP8_CALL.findall(out.compiled.as_text())
    outputs[level] = {dtype: found.count(dtype) for dtype in set(found)}
  assert outputs["flax"] == {"bf16": 18}, outputs
  assert outputs["O2"] == {"bf16": 18}, outputs


@pytest.mark.gpu_aot
@needs_plugin
def test_the_optimizer_writes_each_matrix_in_one_pass_in_place_on_h100():
  """The H100 program writes each matrix's new state in one pass over the whole tensor (after
  loops that take the scales where m or v is narrow, O2/O3): no kernel outside the model
  writes a layer or a row block back into a tensor. The CPU program keeps the loops (XLA on
  CPU copies whole stacks in one pass), which write each layer back; in both the new state
  is written over the donated one."""
  def write_backs(compiled):
    module = hlo_text.parse(compiled.as_text())
    return sum(ins.opcode == "fusion" and "dynamic_update" in (name := ins.attribute(r'op_name="([^"]*)"') or "")
               and "jvp(" not in name and hlo_text.nbytes(ins.type) > 2**20  # not the loops' amax vectors
               for comp in module.values() for ins in comp.values())

  for level in ("none", "O1", "O2", "O3"):
    stage, out = _compiled(level, "1.3b", batch=1, seq=128, vocab=50257)
    assert write_backs(out.compiled) == 0, level
    m = out.compiled.memory_analysis()
    assert m.output_size_in_bytes - m.alias_size_in_bytes < 2**20, level
  cpu = loop.compile_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh, jax.devices("cpu")[:1]),
                          stage.batch)
  assert write_backs(cpu.compiled) >= 24  # at least one per layer (48 at O3 when written)
  m = cpu.compiled.memory_analysis()
  assert m.output_size_in_bytes - m.alias_size_in_bytes < 2**20


@pytest.mark.gpu_aot
@needs_plugin
def test_jax_default_attention_on_h100_is_xla_with_fp32_scores_in_memory():
  """Why models/block.py asks for cuDNN itself: jax.nn.dot_product_attention's default
  (implementation=None) compiles for an H100 to XLA kernels with no cuDNN attention call,
  and its program holds the FP32 [batch, heads, T, S] scores (here 2 x 4 x 256 x 256)."""
  q = _on_h100((2, 256, 4, 64), jax.numpy.bfloat16)
  text = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)).lower(q, q, q).compile(
      targets.CUBLAS).as_text()
  assert "__cudnn$fmha" not in text
  assert re.search(r"f32\[2,4,256,256\]", text), "no FP32 score array in the GPU program"


def _kernels_reading_x(recipe) -> list[str]:
  """The kernels of the H100 program (a GEMM's forward with its amax observations, as the train
  step runs it) that take the activation x as an operand."""
  from jaxlab.fp8 import dot
  x, w, h = _on_h100((1024, 512), jax.numpy.bfloat16), _on_h100((512, 768), jax.numpy.bfloat16), _on_h100((16,))

  def forward_and_observations(x, w, meta):
    y, vjp = jax.vjp(lambda meta: dot.fp8_dot_general(x, w, meta, (((1,), (0,)), ((), ())), recipe), meta)
    return y, vjp(jax.numpy.zeros_like(y))

  text = jax.jit(forward_and_observations).lower(x, w, (h, h, h)).compile(targets.CUBLAS).as_text()
  entry = hlo_text.parse(text)[hlo_text.entry(text)]
  (x_name,) = (i.name for i in entry.values() if i.opcode == "parameter" and i.operands == ("0",))
  return [i.name for i in entry.values() if x_name in i.operands]


@pytest.mark.gpu_aot
@needs_plugin
def test_steady_delayed_scaling_reads_each_gemm_operand_once_on_h100():
  """The just-in-time start (a scale from this step's amax while the history is empty) makes
  the quantization wait for a reduction over x: two kernels read it. Without it (the train
  step after a run's first step) one fusion quantizes x and takes its amax."""
  from jaxlab.fp8 import dot
  assert len(_kernels_reading_x(dot.Recipe("delayed"))) == 2
  assert len(_kernels_reading_x(dot.Recipe("delayed", just_in_time_start=False))) == 1


@pytest.mark.gpu_aot
@needs_plugin
def test_memory_traffic_of_h100_programs_is_the_bytes_worked_by_hand():
  """targets.memory_traffic on three programs compiled for an H100, against bytes counted by
  hand: an elementwise add, a cuBLAS GEMM (its workspace not counted) and a scan over a stacked
  array (each iteration reads its layer's slice, not the stack)."""
  jnp = jax.numpy
  MiB = 2 ** 20
  traffic = lambda f, *args: targets.memory_traffic(jax.jit(f).lower(*args).compile(targets.CUBLAS).as_text())

  add = traffic(lambda a, b: a + b, _on_h100((1024, 1024)), _on_h100((1024, 1024)))
  assert sum(add.values()) == 3 * 4 * MiB  # two 4 MiB reads, one 4 MiB write

  gemm = traffic(lambda x, w: x @ w, _on_h100((1024, 512), jnp.bfloat16), _on_h100((512, 768), jnp.bfloat16))
  assert sum(gemm.values()) == (1024 * 512 + 512 * 768 + 1024 * 768) * 2

  def layers(ws, x):
    def body(c, w):
      c = jnp.tanh(c * w)
      return c, c.sum(0)
    return jax.lax.scan(body, x, ws)
  scan = traffic(layers, _on_h100((8, 512, 512)), _on_h100((512, 512)))
  body = sum(v for k, v in scan.items() if "/while/body/" in k)
  # per layer: tanh(c * w[l]) reads c and w[l] and writes c (3 x 1 MiB), the column sum reads c
  # (1 MiB) and writes 2 KiB, the row written into the stacked output reads and writes 2 KiB;
  # the loop counter and the index: a few bytes
  per_layer = 4 * MiB + 3 * 2048
  assert per_layer * 8 <= body <= per_layer * 8 + 8 * 64


@pytest.mark.gpu_aot
@needs_plugin
def test_the_block_attends_with_cudnn_on_h100_and_xla_on_cpu():
  """models/block.py's "auto" attention, decided when the step is lowered for its devices: the
  same function compiled for an H100 holds cuDNN's forward and backward attention calls and no
  FP32 score array; compiled for this host, XLA's kernels."""
  from jaxlab.models import block
  jnp = jax.numpy
  cfg = block.BlockConfig(d_model=256, num_heads=4, mlp_dim=512, dtype=jnp.bfloat16)
  model = block.Block(cfg)
  x = jnp.zeros((2, 256, 256), jnp.bfloat16)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  loss = jax.jit(jax.grad(lambda p, x: model.apply(p, x).astype(jnp.float32).sum()))

  def compiled(device):
    on = jax.sharding.NamedSharding(jax.sharding.Mesh([device], ("x",)), jax.sharding.PartitionSpec())
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on), (params, x))
    return loss.lower(*args).compile(targets.CUBLAS if targets.is_gpu(device) else None).as_text()

  gpu = targets.custom_calls(compiled(targets.devices("h100")[0]))
  assert gpu.get("__cudnn$fmhaSoftmax") == 1 and gpu.get("__cudnn$fmhaSoftmaxBackward") == 1, gpu
  assert not re.search(r"f32\[2,4,256,256\]", compiled(targets.devices("h100")[0]))
  assert not any(t.startswith("__cudnn") for t in targets.custom_calls(compiled(jax.devices("cpu")[0])))
