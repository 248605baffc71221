"""FP8-LM speed on a GPU, in one run under 5 minutes: per-GEMM timings and a GPT train step
at BF16 (`none`), O1, O2, O3 and flax.linen.fp8_ops (`flax`, the peer), with a check that
every compiled step is what it claims.

  python bench/gpu/fp8_speed.py              # a Hopper-class GPU (H100/H200)
  python bench/gpu/fp8_speed.py --dry-run    # anywhere: tiny shapes, CPU, compile only, seconds
  python bench/gpu/fp8_speed.py --aot h100   # anywhere, with jaxlab[gpu-aot]: full shapes compiled
                                             # for an H100 from this host (jaxlab.targets), no timings

1. GEMMs at M x K x N = 16384 x 2048 x 8192 (FP8-LM 1.3B's MLP at 8 x 2048 tokens): the
   forward y = x.W, the input gradient (dgrad) and the weight gradient (wgrad), each timed as
   its own jitted function including the quantization of its operands, for a BF16 dot,
   jaxlab's `fp8.dot.fp8_dot_general` (`jaxlab`: delayed scaling, as the levels run it;
   `jaxlab_cur`: current scaling) and flax's `fp8_scaled_dot_general` (delayed).
2. A GPT train step at FP8-LM's 1.3B shape (24 layers, d_model 2048, 16 heads, MLP 8192,
   sequence 2048, batch 8), BF16 compute, remat, an *untied* head that takes the FP8 dot
   too (so the head's GEMMs are FP8 at O1-O3 and flax), vocabulary 50304 (GPT-2's 50257
   padded to a multiple of 64, so every GEMM dimension suits FP8 cuBLASLt). The step is
   the platform's: `fp8.apply` on a Task, lowered and compiled by `jaxlab.train.loop`.
   Attention is cuDNN's flash attention on the GPU (`--attention auto`, BF16 at every level;
   `--attention xla` for XLA's, which writes FP32 scores of 2 GiB per layer and pass), in an
   `--aot` compile too where cuDNN is installed (the gpu-aot extra brings it).
   Median step time, tokens/s, peak memory from `compiled.memory_analysis()`, the loss.

Each level compiles in a child process with a time limit (`--level-timeout`) and XLA's pass
log on: the script prints where the step's compile spent its time (the slowest HLO passes) and,
for a level killed by the limit, the pass it was in.

`--aot h100|h200` compiles every GEMM and step for that GPU without one (XLA's ahead-of-time
GPU compile; its GEMMs go to cuBLAS, `targets.CUBLAS`, since it cannot autotune): the FP8
custom-call checks and the memory columns are the GPU program's, the timings are nan.

Checks (exit status 1, naming the level): in the lowered (pre-optimisation) HLO, every dot
that FP8 data reaches is in the form XLA's GEMM rewriter makes an FP8 GEMM of, and a level
has as many such dots as flax (`jaxlab.fp8.hlo`; this runs on CPU too); on a GPU, the
optimized HLO holds as many `__cublas$lt$matmul$f8` custom calls as flax's and, with
`--attention auto` or `cudnn`, cuDNN attention calls (`__cudnn$fmha...`); the loss is finite.

Last line: `o2_vs_bf16=<BF16 step / O2 step> o2_vs_flax=<flax step / O2 step>
fp8_gemms_o2=.. fp8_gemms_flax=..` (FP8 custom calls on a GPU; dots in FP8 form elsewhere;
ratios are nan in a dry run). Goal on an H100/H200: O2 >= 1.3x BF16 and >= flax.

Imports: jax, flax, optax, orbax and ml_collections (jaxlab.config). The GPU machine has all
but ml_collections: `pip download --no-deps -d bench/gpu/wheels ml_collections` here, carry
bench/gpu/wheels, and there `pip install --no-index --no-deps bench/gpu/wheels/*.whl` first.
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import pickle
import re
import statistics
import subprocess
import tempfile
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if "--dry-run" in sys.argv or "--aot" in sys.argv:  # no GPU here: JAX on CPU (an --aot compile needs none)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Each level compiles and runs in its own process (below); this one keeps only the GEMM
# bench's few buffers, so it must not take three quarters of the GPU up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.linen import fp8_ops

from jaxlab import fp8, sharding, targets
from jaxlab.fp8 import dot, hlo
from jaxlab.models import block, gpt
from jaxlab.train import loop, optim
from jaxlab.train.state import Task

F8_GEMM = targets.FP8_GEMM
FMHA = "__cudnn$fmha"  # the prefix of cuDNN's fused attention custom calls (forward and backward)
# kernels of the attention proper (scores, softmax, weighted sum), not its projections
ATTENTION_SCOPE = re.compile(r"/attn/(?!(query|key|value|out)/)")
custom_calls = targets.custom_calls  # target -> count in an optimized module: what XLA made of the dots
LEVELS = ("none", "O2", "flax", "O1", "O3")  # the last line's three first
FP8_LEVELS = ("O1", "O2", "O3", "flax")


FAILURES: list[str] = []  # every failed check, printed again at the end; the exit status is 1 if any


def fail(message: str):
  # A failed check is recorded and the run goes on: a lent GPU is short, and one failure
  # should not hide what the other levels would have shown.
  FAILURES.append(message)
  print(f"FAILED: {message}", flush=True)


def write_hlo(args, name: str, text: str):
  if args.hlo_dir:
    os.makedirs(args.hlo_dir, exist_ok=True)
    with gzip.open(os.path.join(args.hlo_dir, f"{name}.hlo.txt.gz"), "wt") as f:
      f.write(text)


def timed(fn, *args, warmup: int, steps: int) -> float:
  """Median seconds of fn(*args) over `steps` after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


# ---------------------------------------------------------------------------------- GEMMs

DIMS = (((1,), (0,)), ((), ()))


def gemm_impls():
  """name -> f(x, w) for x[M, K] . w[K, N] in BF16. jaxlab with delayed scaling as O1-O3 run it
  after a run's first step (histories with data, no just-in-time start) and with current
  scaling; flax's delayed scaling (it quantizes with the scales it is given)."""
  hist = jnp.zeros((16,), jnp.float32)
  seen = hist.at[0].set(1.0)  # a history with data: delayed scaling past its first step
  one = jnp.ones((1,), jnp.float32)
  return {
      "bf16": lambda x, w: jax.lax.dot_general(x, w, DIMS),
      "jaxlab": lambda x, w: dot.fp8_dot_general(x, w, (seen, seen, seen), DIMS,
                                                 dot.Recipe("delayed", just_in_time_start=False)),
      "jaxlab_cur": lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, dot.Recipe("current")),
      "flax": lambda x, w: fp8_ops.fp8_scaled_dot_general(
          x, w, DIMS, preferred_element_type=jnp.bfloat16, lhs_scale=one, rhs_scale=one, grad_scale=one,
          lhs_amax_history=hist, rhs_amax_history=hist, grad_amax_history=hist, quantize_compute_type=jnp.bfloat16),
  }


def devices(args) -> list:
  """The devices the GEMMs and steps compile for: a GPU target's (--aot) or this host's."""
  return targets.devices(args.aot) if args.aot else jax.devices()


def compile_only(args) -> bool:
  return args.dry_run or bool(args.aot)


def bench_gemms(args, gpu: bool) -> dict:
  m, k, n = args.gemm
  if args.aot:  # shapes on the target's device: nothing to run
    on = jax.sharding.NamedSharding(jax.sharding.Mesh(devices(args)[:1], ("x",)), jax.sharding.PartitionSpec())
    x, w, g = (jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=on) for shape in ((m, k), (k, n), (m, n)))
  else:
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (m, k), jnp.bfloat16)
    w = (jax.random.normal(kw, (k, n)) * 0.02).astype(jnp.bfloat16)
    g = (jax.random.normal(kg, (m, n)) * 1e-3).astype(jnp.bfloat16)
  out = {}
  print(f"\nGEMMs x[{m},{k}] . w[{k},{n}] in BF16 (ms, median of {args.steps}; each includes quantizing its operands)")
  print(f"{'':10s} {'forward':>9s} {'dgrad':>9s} {'wgrad':>9s}   FP8 custom calls (fwd/dgrad/wgrad)")
  for name, f in gemm_impls().items():
    fns = dict(forward=jax.jit(f),
               dgrad=jax.jit(lambda x, w, g, f=f: jax.vjp(lambda a: f(a, w), x)[1](g)[0]),
               wgrad=jax.jit(lambda x, w, g, f=f: jax.vjp(lambda b: f(x, b), w)[1](g)[0]))
    row, calls = dict(forward=math.nan, dgrad=math.nan, wgrad=math.nan), []
    try:
      for part, fn in fns.items():
        fargs = (x, w) if part == "forward" else (x, w, g)
        compiled = fn.lower(*fargs).compile(targets.CUBLAS if args.aot else None)
        text = compiled.as_text()
        calls.append(text.count(F8_GEMM))
        if gpu and name != "bf16" and calls[-1] != 1:
          print(f"  {name} {part}: custom calls {custom_calls(text)}", flush=True)
          if name.startswith("jaxlab"):
            write_hlo(args, f"gemm_{name}_{part}", text)
        row[part] = math.nan if compile_only(args) else timed(compiled, *fargs, warmup=args.warmup, steps=args.steps)
    except Exception:  # noqa: BLE001 -- reported as a failed check, the run goes on
      traceback.print_exc()
      fail(f"GEMM bench: {name} raised (traceback above)")
    out[name] = row
    print(f"{name:10s} " + " ".join(f"{row[p] * 1e3:9.3f}" for p in ("forward", "dgrad", "wgrad"))
          + f"   {'/'.join(map(str, calls))}", flush=True)
    if gpu and name != "bf16" and calls != [1, 1, 1]:
      fail(f"GEMM bench: {name}'s forward/dgrad/wgrad compiled to {calls} FP8 custom calls, not one each")
  return out


# ------------------------------------------------------------------------------ GPT step

# One chip: the timings are per GPU, and a host with forced CPU devices (XLA_FLAGS) still
# compiles the same single-device step in --dry-run.
ONE_CHIP = (("data", 1), ("model", 1))


def level_config(level: str, args) -> ml_collections.ConfigDict:
  # The groups fp8.apply reads, written out: configs/fp8/gpt.py imports the LM trainer, whose
  # data pipeline (tfds, grain, tokenizers) the GPU machine does not have.
  c = ml_collections.ConfigDict()
  c.fp8 = fp8.default_config()
  c.fp8.level = level
  c.optim = dict(learning_rate=2e-4, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95,
                 eps=1e-8, grad_clip=1.0)
  c.train = dict(steps=1000, batch_size=args.batch)
  c.mesh = ONE_CHIP
  c.sharding = dict(layout="dp", extra_rules=())
  return fp8.configure(c)


def gpt_task(level: str, args) -> Task:
  cfg = level_config(level, args)
  model = gpt.GPT(gpt.GPTConfig(vocab_size=args.vocab, max_len=args.seq, num_layers=args.layers,
                                d_model=args.d_model, num_heads=args.heads, mlp_dim=args.mlp,
                                tied_embeddings=False, dtype=jnp.bfloat16, remat=True, attention=args.attention))

  def loss(model, variables, batch, rng):
    del rng
    logits, updates = model.apply(variables, batch["inputs"], mutable=[k for k in variables if k != "params"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"]).mean()
    return nll, ({"loss": nll}, updates)

  task = Task(model=model, init=lambda m, rng: m.init(rng, jnp.zeros((1, args.seq), jnp.int32)), loss=loss,
              optimizer=optim.adamw(cfg.optim, cfg.train.steps), schedule=optim.schedule(cfg.optim, cfg.train.steps),
              units_per_batch=("tokens", args.batch * args.seq))
  return fp8.apply(cfg, task)  # the method's one transformation, as every trainer applies it


def bench_step(level: str, args, gpu: bool) -> dict:
  task = gpt_task(level, args)
  opts = loop.Options(steps=1000, batch_size=args.batch, mesh=ONE_CHIP)
  mesh = sharding.make_mesh(opts.mesh, devices(args)[:1])
  spec = {k: jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32) for k in ("inputs", "targets")}
  t0 = time.perf_counter()
  low = loop.lower_step(task, opts, mesh, spec)
  dots = hlo.fp8_dots(low.lowered.as_text(dialect="hlo"))
  with loop.mesh_context(opts, mesh):
    compiled = low.lowered.compile(targets.CUBLAS if args.aot else None)
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + max(mem.output_size_in_bytes - mem.alias_size_in_bytes, 0)
  text = compiled.as_text()
  batch_bytes = sum(math.prod(v.shape) * v.dtype.itemsize for v in spec.values())
  kernels = targets.kernel_traffic(text) if gpu else None  # (kind, scope, bytes) of each kernel
  moved = lambda keep: sum(b for kind, scope, b in kernels if keep(kind, scope)) if gpu else math.nan
  r = dict(dots=dots, calls=text.count(F8_GEMM), fmha=text.count(FMHA), attention=args.attention, peak=peak,
           compile=compile_s, step=math.nan, loss=math.nan, state=mem.argument_size_in_bytes - batch_bytes,
           temp=mem.temp_size_in_bytes, traffic=moved(lambda kind, scope: True),
           non_gemm=moved(lambda kind, scope: not kind.startswith("__cublas")),
           attention_traffic=moved(lambda kind, scope: ATTENTION_SCOPE.search(scope)))
  if gpu:
    print(f"  {level}: custom calls in the optimized step {custom_calls(text)}", flush=True)
    if level in ("O2", "flax"):
      write_hlo(args, f"step_{level}", text)
  if compile_only(args):
    return r
  setup = low.setup
  with loop.mesh_context(opts, mesh):
    state = jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
  batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, setup.data_sharding)
  rng = jax.device_put(jax.random.key(1), setup.replicated)
  with loop.mesh_context(opts, mesh):  # a fresh run's first step, as loop.run takes it (Task.after_first_step)
    state, _ = setup.first_step(state, batch, rng)
  holder = {"state": state}

  def once():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics

  r["step"] = timed(once, warmup=args.warmup, steps=args.steps)
  r["loss"] = float(jax.device_get(once()["loss"]))
  return r


# XLA logs every HLO pass it runs, with its time, at this verbosity: the child's log says where
# a compile spends its time, and in which pass it was when a level was killed.
PASS_LOG = dict(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="hlo_pass_pipeline=1")
_LOG_LINE = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d(?:\.\d+)?)\s+(\d+) hlo_pass_pipeline\.cc:\d+\] (.*)$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def compile_profile(log: str, module: str = "jit_step") -> dict:
  """The HLO passes XLA ran on `module`, from a log written under PASS_LOG: `passes` {name:
  seconds, summed over its runs}, `running` (pipeline, pass, start second of the day) of a pass
  that started and never logged its time (the process was killed in it), `started` whether
  any pass ran on the module, `last` the second of the day of its last logged line."""
  current: dict[str, tuple] = {}  # thread -> (module, pipeline) it is compiling
  pipelines: set[str] = set()  # a nested pipeline logs its time as a pass: not counted twice
  passes: dict[str, float] = {}
  open_pass: dict[str, tuple] = {}  # thread -> (pipeline, pass, start) not yet timed
  started, last = False, None
  for line in log.splitlines():
    m = _LOG_LINE.match(line)
    if not m:
      continue
    seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    thread, msg = m[4], m[5].strip()
    head = re.match(r"Running HLO pass pipeline on module (\S+): (.*)", msg)
    if head:
      current[thread] = (head[1], head[2])
      pipelines.add(head[2])
      continue
    if current.get(thread, ("",))[0] != module:
      continue
    started, last = True, seconds
    done = re.match(r"HLO pass: (\S+) time: ([\d.]+) (us|ms|s|min|h)\b", msg)
    if done:
      passes[done[1]] = passes.get(done[1], 0.0) + float(done[2]) * _UNITS[done[3]]
      open_pass.pop(thread, None)
    elif msg.startswith("HLO pass "):
      open_pass[thread] = (current[thread][1], msg[len("HLO pass "):].strip(), seconds)
  running = max(open_pass.values(), key=lambda p: p[2]) if open_pass else None
  return dict(passes={k: v for k, v in passes.items() if k not in pipelines}, running=running, started=started,
              last=last)


def describe_profile(profile: dict, killed_at: float | None = None, top: int = 4) -> str:
  """One line: total seconds in passes, the slowest, and (killed) the pass it was killed in."""
  if not profile["started"]:
    return "XLA had not started compiling the step"
  total = sum(profile["passes"].values())
  slow = sorted(profile["passes"].items(), key=lambda kv: -kv[1])[:top]
  text = f"{total:.1f} s in XLA's HLO passes; slowest " + ", ".join(f"{k} {v:.1f} s" for k, v in slow)
  if profile["running"]:
    pipeline, name, start = profile["running"]
    since = f" for {(killed_at - start) % 86400:.0f} s" if killed_at is not None else ""
    text += f"; killed in pass {name} (pipeline {pipeline}){since}"
  elif killed_at is not None:
    text += f"; killed {(killed_at - profile['last']) % 86400:.0f} s after its last pass (code generation, or later work)"
  return text


def _second_of_day() -> float:
  """Now, as the log's timestamps count it (local time of day)."""
  t = time.time()
  lt = time.localtime(t)
  return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + t % 1


def run_level(level: str, args, attention: str = "") -> dict | None:
  """bench_step in a child process with a time limit, so a level whose compile hangs is
  reported and the others still run. None (and a failed check) when it raised or timed out.
  The child logs XLA's passes (PASS_LOG); their profile is printed, and names the pass a
  killed compile was in. A step that raised with cuDNN attention is run once more with XLA's
  (a failed check all the same), so a GPU session still gets the level's timing."""
  attention = attention or args.attention
  shape = ["--layers", args.layers, "--d-model", args.d_model, "--heads", args.heads, "--mlp", args.mlp,
           "--seq", args.seq, "--batch", args.batch, "--vocab", args.vocab, "--warmup", args.warmup,
           "--steps", args.steps, "--hlo-dir", args.hlo_dir, "--attention", attention]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.pkl")
    cmd = [sys.executable, os.path.abspath(__file__), *map(str, shape), "--only-level", level, "--result-file", out]
    if args.dry_run:
      cmd.append("--dry-run")
    if args.aot:
      cmd += ["--aot", args.aot]
    log_path = os.path.join(tmp, "stderr.log")
    with open(log_path, "w") as log:
      try:
        done = subprocess.run(cmd, timeout=args.level_timeout, stderr=log, env={**os.environ, **PASS_LOG})
        killed_at = None
      except subprocess.TimeoutExpired:
        done, killed_at = None, _second_of_day()
    with open(log_path) as log:
      text = log.read()
    # the child's own messages (tracebacks, warnings) without XLA's info lines
    sys.stderr.write("".join(l for l in text.splitlines(keepends=True) if not re.match(r"^I\d{4} ", l)))
    profile = describe_profile(compile_profile(text), killed_at)
    print(f"  {level}: {profile}", flush=True)
    if done is None:
      fail(f"level {level}: compile + {args.warmup + args.steps + 1} steps did not finish in {args.level_timeout:.0f} s "
           f"({profile})")
      return None
    if done.returncode != 0 or not os.path.exists(out):
      fail(f"level {level}: the step raised (exit status {done.returncode}, traceback above)"
           + ("; run again with XLA attention" if attention != "xla" else ""))
      return run_level(level, args, "xla") if attention != "xla" else None
    with open(out, "rb") as f:
      return pickle.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU, compile only: the checks, no timings")
  p.add_argument("--aot", choices=sorted(targets.TARGETS), default=None,
                 help="compile for this GPU from this host (needs jaxlab[gpu-aot]): the checks and memory, no timings")
  p.add_argument("--gemm", type=int, nargs=3, default=(16384, 2048, 8192), metavar=("M", "K", "N"))
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--d-model", type=int, default=2048)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--mlp", type=int, default=8192)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--vocab", type=int, default=50304)
  p.add_argument("--attention", choices=block.ATTENTIONS, default="auto",
                 help="the step's attention kernel (auto: cuDNN flash attention on an NVIDIA GPU, XLA elsewhere)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--levels", nargs="+", default=LEVELS, choices=LEVELS,
                 help="levels to time, in this order (default: none, O2 and flax first, then O1, O3)")
  p.add_argument("--level-timeout", type=float, default=150,
                 help="seconds one level may take (compile, init, steps) before it is killed and reported")
  p.add_argument("--only-level", default="", help=argparse.SUPPRESS)  # the child process of one level
  p.add_argument("--result-file", default="", help=argparse.SUPPRESS)
  p.add_argument("--hlo-dir", default="", help="write the optimized HLO of the O2 and flax steps (and of any GEMM "
                 "that is not one FP8 custom call) here, gzipped")
  args = p.parse_args()
  if args.dry_run:
    args.gemm = (256, 128, 192)
    args.layers, args.d_model, args.heads, args.mlp, args.seq, args.batch, args.vocab = 2, 64, 2, 256, 64, 4, 512

  dev = devices(args)[0]
  gpu = targets.is_gpu(dev)
  if args.only_level:
    with open(args.result_file, "wb") as f:
      pickle.dump(bench_step(args.only_level, args, gpu), f)
    return
  print(f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}" + ("; dry run: compile only" if args.dry_run else "")
        + ("; compiled from this host (ahead of time), GEMMs to cuBLAS: no timings" if args.aot else ""))
  bench_gemms(args, gpu)

  cudnn = gpu and (args.attention == "cudnn" or (
      args.attention == "auto" and block.cudnn_applies(jnp.bfloat16, args.d_model // args.heads, False)))
  print(f"\nGPT step: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, mlp {args.mlp}, seq {args.seq}, "
        f"batch {args.batch}, vocab {args.vocab}, untied FP8 head, remat, BF16 compute, "
        f"{'cuDNN' if cudnn else 'XLA'} attention"
        + ("" if cudnn or not gpu or block.cudnn_traceable() else " (no cuDNN to trace cuDNN attention with here)"))
  bf16 = gpt_task("none", argparse.Namespace(**{**vars(args), "attention": "xla"}))  # shapes only: any kernel
  shapes = jax.eval_shape(lambda r: bf16.init(bf16.model, r), jax.random.key(0))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  print(f"{n_params / 1e6:.1f}M parameters; `state B/p` is the compiled step's argument bytes less the batch's, per "
        "parameter (weights, master, moments, scales as each level stores them); `temp GiB` its temporaries; "
        "`HBM GiB` the compiled step's memory traffic estimated from its kernels (targets.kernel_traffic), "
        "`non-GEMM` the part outside cuBLAS GEMMs, `attn` the attention's; `GB/s` HBM GiB over the step time")
  print(f"{'level':6s} {'step ms':>9s} {'tokens/s':>11s} {'vs none':>8s} {'peak GiB':>9s} {'loss':>8s} "
        f"{'FP8-form dots':>14s} {'f8 calls':>9s} {'compile s':>9s} {'state B/p':>9s} {'temp GiB':>8s} "
        f"{'HBM GiB':>8s} {'non-GEMM':>8s} {'attn':>6s} {'GB/s':>6s}")
  res = {}
  for level in args.levels:
    t0 = time.perf_counter()
    r = run_level(level, args)
    if r is None:
      continue
    res[level] = r
    speed = res["none"]["step"] / r["step"] if "none" in res else math.nan
    print(f"{level:6s} {r['step'] * 1e3:9.1f} {args.batch * args.seq / r['step']:11,.0f} {speed:7.2f}x "
          f"{r['peak'] / 2**30:9.2f} {r['loss']:8.4f} {len(r['dots'].fp8):6d} of {len(r['dots'].dots):<5d} "
          f"{r['calls']:9d} {r['compile']:9.1f} {r['state'] / n_params:9.2f} {r['temp'] / 2**30:8.2f} "
          f"{r['traffic'] / 2**30:8.1f} {r['non_gemm'] / 2**30:8.1f} {r['attention_traffic'] / 2**30:6.1f} "
          f"{r['traffic'] / r['step'] / 1e9:6.0f}"
          f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if cudnn and r["attention"] != "xla" and not r["fmha"]:
      fail(f"level {level}: no cuDNN attention (`{FMHA}...` custom calls) in the optimized step")
    if not compile_only(args) and not math.isfinite(r["loss"]):
      fail(f"level {level}: the loss is {r['loss']}")

  nan_level = dict(dots=hlo.fp8_dots(""), calls=-1, step=math.nan)
  get = lambda level: res.get(level, nan_level)  # a level that raised counts as missing
  flax = get("flax")
  for level in FP8_LEVELS:
    if level not in res or level == "flax":
      continue
    d = res[level]["dots"]
    if d.blocked:
      fail(f"level {level}: dots that FP8 data reaches but not in FP8 form: {d.summary()}")
    if len(d.fp8) != len(flax["dots"].fp8):
      fail(f"level {level}: {len(d.fp8)} dots in FP8 form, flax has {len(flax['dots'].fp8)}")
    if gpu and res[level]["calls"] != flax["calls"]:
      fail(f"level {level}: {res[level]['calls']} `{F8_GEMM}` custom calls in the optimized step, "
           f"flax has {flax['calls']}")
  if get("none")["dots"].fp8:
    fail("level none: its step has FP8 dots")
  count = (lambda lv: get(lv)["calls"]) if gpu else (lambda lv: len(get(lv)["dots"].fp8))
  o2_bf16 = get("none")["step"] / get("O2")["step"]
  o2_flax = flax["step"] / get("O2")["step"]
  if not gpu:
    print("\nno GPU: XLA emits FP8 custom calls only on Hopper-class GPUs, so fp8_gemms counts dots in FP8 form "
          "in the lowered HLO; CPU timings say nothing about FP8 speed")
  elif not compile_only(args):
    goal = o2_bf16 >= 1.3 and o2_flax >= 1.0
    print(f"\ngoal O2 >= 1.3x BF16 and >= flax: {'met' if goal else 'NOT met'}")
  if FAILURES:
    print(f"\n{len(FAILURES)} check(s) FAILED:\n" + "\n".join(f"  {m}" for m in FAILURES))
  print(f"o2_vs_bf16={o2_bf16:.2f} o2_vs_flax={o2_flax:.2f} fp8_gemms_o2={count('O2')} fp8_gemms_flax={count('flax')}",
        flush=True)
  if FAILURES:
    sys.exit(1)


if __name__ == "__main__":
  main()
