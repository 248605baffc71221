"""TLEG on MNIST, as a study that could show it does not work.

  nice -n 15 .venv/bin/python bench/learngene_mnist.py [--quick] [--out DIR]

Every model is the classify trainer's Task (configs/learngene/vit.py, with the learngene
method applied by `methods.apply`, as every trainer does) driven by a short loop here that
the shared loop does not offer: a held-out evaluation at step 0 and at a fine interval, and
a stop at a plateau or at a target accuracy. Steps are jaxlab's own jitted train step
(`loop.build`).

Data: the MNIST test set in ../shared/data (10,000 images): first 8,000 train, last 2,000
held out (never trained on; every accuracy below is on it). Without ../shared: the sklearn
digits (1,437 / 360), said so in the output. Models: tiny ViTs (width 32, 2 heads, MLP 64,
14x14 patches: 4 tokens), batch 128 (64 with --quick), AdamW 3e-3, 50 warmup steps, then a constant learning
rate for every run whose steps-to-accuracy is measured (so that a run's budget does not
shape its curve); pretrained runs (teacher, auxiliary, plain depth-6) use cosine decay.

Stages (each cached under --out: a rerun continues where it stopped):
  teacher     a small CNN (model.kind=cnn), trained on labels
  per seed:
    aux       the auxiliary model: depth 6, layers expanded from the learngene, soft
              distillation from the teacher (alpha 1, tau 1, DeiT's normalisation)
    plain6    the control's source: a plain depth-6 ViT trained exactly like aux
    for each depth L in DEPTHS:
      scratch   trained on labels until its held-out accuracy plateaus (see `plateau`);
                its converged accuracy is the mean over the plateau window
      des       descendant: layers theta_A + (l/L) theta_B from aux, trained on labels
      kd        scratch + soft distillation from the same teacher (alpha 0.5, tau 1)
      interp    plain6's layers resampled to depth L (learngene.mode=interpolated)
      des/kd/interp stop when they reach scratch's converged accuracy (see `reach`) or at
      scratch's last step
  transfer, per seed: aux and plain6 learned on digits 0-4 (labels), then on digits 5-9
    (relabelled 0-4, a fresh head): scratch to a plateau, descendant and interpolated
    control, at TRANSFER_DEPTHS

Speedup of X over scratch = scratch's steps to its converged accuracy / X's steps to it;
"charged" adds to X the auxiliary model's steps spread over the depths (aux_steps /
len(DEPTHS); plain6 costs the same and is charged to interp), "uncharged" does not.
Speedups are geometric means over seeds (min-max shown). The teacher's steps are not
charged to anyone (a pretrained model, as in the paper; scratch does not use it).
Last line: min_speedup=.. min_speedup_vs_kd=.. min_speedup_vs_interp=.. seeds=..
converged=1|0 stored_ratio=.. (the minimum over depths of the charged speedups of the
descendant over scratch, over scratch + KD and over the interpolated control; converged=1
only if every scratch run plateaued before its step cap).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from jaxlab import checkpoint, config as config_lib, learngene, sharding  # noqa: E402
from jaxlab.data import builtin, images  # noqa: E402
from jaxlab.train import loop  # noqa: E402
from jaxlab.trainers import classify, methods  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "learngene", "vit.py")
RESULTS = os.path.join(REPO, "bench", "results")

SETTINGS = {
    # steps: teacher, aux/plain6 (also for transfer); plateau: window W, min gain delta,
    # first possible stop, step cap
    "full": dict(depths=(2, 4, 8, 12), transfer_depths=(4, 12), seeds=(0, 1, 2), batch=128, teacher_steps=800,
                 aux_steps=1000, window=600, delta=0.0025, min_steps=1200, max_steps=8000),
    "quick": dict(depths=(2, 4), transfer_depths=(2,), seeds=(0,), batch=64, teacher_steps=80, aux_steps=60,
                  window=60, delta=0.01, min_steps=120, max_steps=240),
}
VIT = ["model.d_model=32", "model.num_heads=2", "model.mlp_dim=64"]
TRAIN = ["optim.learning_rate=3e-3", "optim.warmup_steps=50", "train.log_every=1000000",
         "train.eval_every=0", "train.checkpoint_every=1000000"]
CONSTANT_LR = ["optim.min_lr_ratio=1.0"]  # cosine from lr to lr: constant after warmup
AUX_DEPTH = 6
EVAL_BATCH = 1000


# ------------------------------------------------------------------------------ curve analysis

def eval_steps(max_steps: int) -> list[int]:
  """Where accuracy is evaluated: step 0, every 10 steps to 200, every 25 to 1,000, then
  every 50 (fine where the fast runs reach their target, coarse where only scratch runs)."""
  steps = [0] + list(range(10, 201, 10)) + list(range(225, 1001, 25)) + list(range(1050, max_steps + 1, 50))
  return [s for s in steps if s <= max_steps]


def resolution(step: int) -> int:
  """The evaluation interval that ends at `step`: a reach reported at `step` happened in
  (step - resolution, step]."""
  return 0 if step == 0 else 10 if step <= 200 else 25 if step <= 1000 else 50


def smoothed(curve: list[tuple[int, float]]) -> list[float]:
  """Trailing mean of the last 3 evaluations (fewer at the start): one lucky evaluation
  does not count as reaching an accuracy."""
  acc = [a for _, a in curve]
  return [float(np.mean(acc[max(0, i - 2):i + 1])) for i in range(len(acc))]


def window_mean(curve, lo: float, hi: float) -> float:
  """Mean accuracy of the evaluations with lo < step <= hi (nan if none)."""
  vals = [a for s, a in curve if lo < s <= hi]
  return float(np.mean(vals)) if vals else float("nan")


def plateau(curve, window: int, delta: float, min_steps: int) -> float | None:
  """Scratch's plateau rule: at the last evaluation (step s >= min_steps), the mean
  held-out accuracy over (s - window, s] exceeds the mean over (s - 2 window, s - window]
  by less than `delta`. Returns the converged accuracy (the mean over the last window),
  or None while it is still improving."""
  s = curve[-1][0]
  if s < max(min_steps, 2 * window):
    return None
  recent, before = window_mean(curve, s - window, s), window_mean(curve, s - 2 * window, s - window)
  return recent if recent - before < delta else None


def reach(curve, target: float) -> int | None:
  """First evaluated step whose trailing 3-evaluation mean is >= target, or None."""
  for (step, _), value in zip(curve, smoothed(curve)):
    if value >= target - 1e-9:
      return step
  return None


def cost(run: dict, charge: float = 0.0) -> tuple[float, bool]:
  """(steps to the target + charge, exact): a run that never reached it (stopped at its cap)
  costs at least its steps + charge (exact=False)."""
  return (run["reach"] if run["reach"] is not None else run["steps"]) + charge, run["reach"] is not None


def speedup(base: tuple[float, bool], new: tuple[float, bool]) -> tuple[float, str]:
  """(base cost / new cost, kind): kind "=" when both are measured, "<" when only `new` is a
  lower bound (so the speedup is at most this), ">" when only `base` is, "?" when both are.
  A cost of 0 (the target met at step 0, nothing charged) gives inf."""
  (b, b_exact), (n, n_exact) = base, new
  kind = {(True, True): "=", (True, False): "<", (False, True): ">", (False, False): "?"}[(b_exact, n_exact)]
  return (b / n if n > 0 else math.inf), kind


def geomean(values) -> float:
  """Geometric mean (inf if any value is inf)."""
  values = list(values)
  if any(math.isinf(v) for v in values):
    return math.inf
  return float(np.exp(np.mean(np.log(values))))


# ------------------------------------------------------------------------------ data

class Records:
  """A random-access source of {"image", "label"} records over arrays (what classify's
  make_task reads its data sources as)."""

  def __init__(self, x: np.ndarray, y: np.ndarray):
    self.x, self.y = x, y

  def __len__(self):
    return len(self.y)

  def __getitem__(self, i):
    return {"image": self.x[i], "label": int(self.y[i])}


def load_digits(dataset: str, classes: tuple[int, ...] | None = None):
  """(ImageData, train arrays, test arrays); with `classes`, only those digits, relabelled
  0..k-1 in the order given."""
  source = builtin.resolve_shared("shared:images/mnist", "data.source_dir") if dataset == "mnist" else ""
  x, y, n = images.load_arrays(dataset, source)
  parts = [(x[:n], y[:n]), (x[n:], y[n:])]
  k = 10
  if classes is not None:
    remap = {c: i for i, c in enumerate(classes)}
    parts = [(px[np.isin(py, classes)], np.array([remap[int(v)] for v in py[np.isin(py, classes)]]))
             for px, py in parts]
    k = len(classes)
  (xtr, ytr), (xte, yte) = parts
  data = images.ImageData(train=Records(xtr, ytr), test=Records(xte, yte), image_shape=tuple(x.shape[1:]),
                          num_classes=k)
  return data, (xtr, ytr), (xte, yte)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
  """Endless shuffled batches, a fresh permutation per epoch (numpy: no per-record pipeline
  cost, which at this model size would rival the step)."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(y))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      yield {"images": x[idx].astype(np.float32) / 255.0, "labels": y[idx].astype(np.int32),
             "mask": np.ones(batch_size, np.float32)}


def eval_batches(x: np.ndarray, y: np.ndarray):
  """The held-out set in batches of EVAL_BATCH, the last padded with mask 0."""
  out = []
  for i in range(0, len(y), EVAL_BATCH):
    xb, yb = x[i:i + EVAL_BATCH].astype(np.float32) / 255.0, y[i:i + EVAL_BATCH].astype(np.int32)
    pad = EVAL_BATCH - len(yb)
    out.append({"images": np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], np.float32)]),
                "labels": np.concatenate([yb, np.zeros(pad, np.int32)]),
                "mask": np.concatenate([np.ones(len(yb), np.float32), np.zeros(pad, np.float32)])})
  return out


# ------------------------------------------------------------------------------ one run

def train_run(role: str, overrides: list[str], data, train_arrays, test_arrays, *, max_steps: int,
              stop=None, save_dir: str | None = None) -> dict:
  """Train the classify Task of `role` (methods applied) with evaluations at `eval_steps`,
  until `stop(curve)` is true or `max_steps`. With `save_dir`, the final state and the
  config are written there as a run directory (what teacher_workdir / gene_workdir read).
  Returns {"curve", "steps", "seconds", "parameters_stored"}."""
  cfg = config_lib.load(f"{CONFIG}:{role}", overrides + [f"train.steps={max_steps}"])
  cfg = methods.configure(cfg)
  classify.validate(cfg)
  task = methods.apply(cfg, classify.make_task(cfg, data))
  task = task.replace(train_data=batches(*train_arrays, cfg.train.batch_size, cfg.seed))
  opts = loop.options(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  evals, held_out = set(eval_steps(max_steps)), eval_batches(*test_arrays)
  t0 = time.perf_counter()
  with loop.mesh_context(opts, mesh):
    setup = loop.build(task, opts, mesh)
    rng = jax.random.key(opts.seed)
    state = jax.jit(setup.init_fn, out_shardings=setup.state_shardings)(rng)

    def accuracy(state):
      sums = [setup.eval_step(state, sharding.global_batch(b, setup.data_sharding)) for b in held_out]
      sums = jax.device_get(sums)
      return float(sum(s["correct"] for s in sums) / sum(s["count"] for s in sums))

    curve, step = [(0, accuracy(state))], 0
    done = bool(stop and stop(curve))
    train_iter = iter(task.train_data)
    while step < max_steps and not done:
      state, _ = setup.train_step(state, sharding.global_batch(next(train_iter), setup.data_sharding), rng)
      step += 1
      if step in evals:
        curve.append((step, accuracy(state)))
        done = bool(stop and stop(curve))  # the curve, so the rule's answer, changes only here
    if save_dir:
      config_lib.write(cfg, save_dir)
      mngr = checkpoint.manager(os.path.join(save_dir, "checkpoints"), keep=1)
      checkpoint.save(mngr, step, state)
      mngr.wait_until_finished()
  stored = classify.parameters_stored(cfg, data.image_shape, data.num_classes)
  return {"curve": curve, "steps": step, "seconds": time.perf_counter() - t0, "parameters_stored": stored}


def cached(path: str, fn) -> dict:
  """fn()'s result, computed once: stored as JSON at `path` and read back on a rerun."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  result = fn()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(path + ".tmp", path)  # a killed run leaves no half-written result
  return result


# ------------------------------------------------------------------------------ the study

def study(args, s: dict) -> dict:
  """Run (or read back) every stage of `args.part` (all, main or transfer); returns the results."""
  dataset = "mnist" if builtin.shared_data_dir() is not None else "digits"
  patch = 14 if dataset == "mnist" else 4  # 4 tokens either way
  base = [f"data.name={dataset}", f"model.patch_size={patch}", f"train.batch_size={s['batch']}"] + VIT + TRAIN
  full_data = load_digits(dataset)
  out = args.out
  say = lambda *a: print(*a, flush=True)  # noqa: E731
  say(f"data: {dataset}, {len(full_data[1][1]):,} train / {len(full_data[2][1]):,} held-out images; "
      f"{jax.device_count()} {jax.default_backend()} device(s)")
  workdir = lambda name: os.path.join(out, "workdirs", name)  # noqa: E731

  def run(name, role, overrides, data=full_data, save=False, **kw):
    path = os.path.join(out, "runs", name + ".json")
    fresh = not os.path.exists(path)
    result = cached(path, lambda: train_run(role, base + overrides, *data, save_dir=workdir(name) if save else None,
                                            **kw))
    if fresh:
      say(f"  {name}: {result['steps']} steps, accuracy {result['curve'][-1][1]:.4f} "
          f"({result['seconds']:.0f}s)")
    return result

  def scratch_to_plateau(name, overrides, data):
    sc = run(name, "scratch", overrides, data=data, max_steps=s["max_steps"],
             stop=lambda c: plateau(c, s["window"], s["delta"], s["min_steps"]) is not None)
    target = plateau(sc["curve"], s["window"], s["delta"], s["min_steps"])
    sc["converged"] = target is not None  # else: the cap was hit, and the last window's mean stands in
    sc["target"] = target if target is not None else window_mean(sc["curve"], sc["steps"] - s["window"], sc["steps"])
    # the compared runs stop at the target or at scratch's last step
    return sc, dict(max_steps=sc["steps"], stop=lambda c: reach(c, sc["target"]) is not None)

  res = {"dataset": dataset, "teacher": run("teacher", "teacher", ["optim.learning_rate=2e-3"], save=True,
                                            max_steps=s["teacher_steps"])}
  teacher = [f"distill.teacher_workdir={workdir('teacher')}", "distill.tau=1.0"]
  kd_pre, kd_base = teacher + ["distill.alpha=1.0"], teacher + ["distill.alpha=0.5"]
  six = [f"model.num_layers={AUX_DEPTH}"]
  for seed in s["seeds"]:
    sd = [f"seed={seed}"]
    if args.part in ("all", "main"):
      res[f"aux_s{seed}"] = run(f"aux_s{seed}", "auxiliary", sd + kd_pre + six, save=True, max_steps=s["aux_steps"])
      res[f"plain6_s{seed}"] = run(f"plain6_s{seed}", "scratch", sd + kd_pre + six, save=True,
                                   max_steps=s["aux_steps"])
      for depth in s["depths"]:
        dl = sd + CONSTANT_LR + [f"model.num_layers={depth}"]
        res[f"scratch_L{depth}_s{seed}"], until = scratch_to_plateau(f"scratch_L{depth}_s{seed}", dl, full_data)
        res[f"des_L{depth}_s{seed}"] = run(f"des_L{depth}_s{seed}", "descendant",
                                           dl + [f"learngene.gene_workdir={workdir(f'aux_s{seed}')}"], **until)
        res[f"kd_L{depth}_s{seed}"] = run(f"kd_L{depth}_s{seed}", "scratch", dl + kd_base, **until)
        res[f"interp_L{depth}_s{seed}"] = run(f"interp_L{depth}_s{seed}", "interpolated",
                                              dl + [f"learngene.gene_workdir={workdir(f'plain6_s{seed}')}"], **until)
    if args.part in ("all", "transfer"):
      # learned on digits 0-4 (labels), descendants with a fresh head on 5-9
      src, dst = load_digits(dataset, (0, 1, 2, 3, 4)), load_digits(dataset, (5, 6, 7, 8, 9))
      res[f"t_aux_s{seed}"] = run(f"t_aux_s{seed}", "auxiliary", sd + six, data=src, save=True,
                                  max_steps=s["aux_steps"])
      res[f"t_plain6_s{seed}"] = run(f"t_plain6_s{seed}", "scratch", sd + six, data=src, save=True,
                                     max_steps=s["aux_steps"])
      fresh_head = ["learngene.reinit_head=true"]
      for depth in s["transfer_depths"]:
        dl = sd + CONSTANT_LR + [f"model.num_layers={depth}"]
        res[f"t_scratch_L{depth}_s{seed}"], until = scratch_to_plateau(f"t_scratch_L{depth}_s{seed}", dl, dst)
        res[f"t_des_L{depth}_s{seed}"] = run(f"t_des_L{depth}_s{seed}", "descendant", dl + fresh_head + [
            f"learngene.gene_workdir={workdir(f't_aux_s{seed}')}"], data=dst, **until)
        res[f"t_interp_L{depth}_s{seed}"] = run(f"t_interp_L{depth}_s{seed}", "interpolated", dl + fresh_head + [
            f"learngene.gene_workdir={workdir(f't_plain6_s{seed}')}"], data=dst, **until)
  return res


def fmt_speed(values: list[tuple[float, str]]) -> str:
  """'g (lo-hi)' over seeds; a leading <, > or ? when some seed's value is a bound (see `speedup`)."""
  g = geomean(v for v, _ in values)
  lo, hi = min(v for v, _ in values), max(v for v, _ in values)
  kinds = {k for _, k in values} - {"="}
  mark = "?" if len(kinds) > 1 else (kinds.pop() if kinds else "")
  return f"{mark}{g:.2f}x ({lo:.2f}-{hi:.2f})"


def fmt_steps(runs: list[dict]) -> str:
  """'mean ± std' of steps to the target over seeds, and how many never reached it."""
  vals = [r["reach"] for r in runs if r["reach"] is not None]
  missing = sum(r["reach"] is None for r in runs)
  text = f"{np.mean(vals):.0f} ± {np.std(vals):.0f}" if vals else "-"
  return text + (f" ({missing} not reached)" if missing else "")


def analyse(res: dict, s: dict, prefix: str, depths, compared: tuple[str, ...], charge: float) -> tuple[list, dict]:
  """Per depth: scratch's converged accuracy and steps to it, each compared run's steps to
  it, and the speedups (see the module doc); returns (rows, minima over depths of the
  geometric-mean speedups)."""
  rows = []
  for depth in depths:
    sc = runs_of(res, prefix, "scratch", depth, s)
    for r in sc:
      r["reach"] = reach(r["curve"], r["target"])
    row = {"depth": depth, "target": [r["target"] for r in sc], "converged": all(r["converged"] for r in sc),
           "scratch": fmt_steps(sc)}
    runs = {m: runs_of(res, prefix, m, depth, s) for m in compared}
    for m in compared:
      for r, base in zip(runs[m], sc):
        r["reach"] = reach(r["curve"], base["target"])
      row[m] = fmt_steps(runs[m])
      row[m + "_acc0"] = float(np.mean([r["curve"][0][1] for r in runs[m]]))
      row[m + "_res"] = max((resolution(r["reach"]) / r["reach"] if r["reach"] else 0.0) for r in runs[m])
      c = charge if m in ("des", "interp") else 0.0  # interp's plain depth-6 source costs what aux does
      row[m + "_speed"] = [speedup(cost(b), cost(r)) for r, b in zip(runs[m], sc)]
      row[m + "_speed_c"] = [speedup(cost(b), cost(r, c)) for r, b in zip(runs[m], sc)]
    for m in ("kd", "interp"):
      if m in compared:
        c = charge if m == "interp" else 0.0
        row[f"des_vs_{m}"] = [speedup(cost(o, c), cost(d, charge)) for d, o in zip(runs["des"], runs[m])]
    rows.append(row)
  minima = {name: min(geomean(v for v, _ in row[name]) for row in rows)
            for name in ("des_speed", "des_speed_c", "des_vs_kd", "des_vs_interp") if name in rows[0]}
  return rows, minima


def runs_of(res, prefix, name, depth, s):
  """The seeds' results of one method at one depth."""
  return [res[f"{prefix}{name}_L{depth}_s{seed}"] for seed in s["seeds"]]


def plot(res: dict, s: dict, prefix: str, depths, names: dict, path: str, title: str) -> str:
  """Held-out accuracy against steps, one panel per depth, every seed drawn thin."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  colours = {"scratch": "k", "des": "tab:red", "kd": "tab:blue", "interp": "tab:green"}
  fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False)
  for ax, depth in zip(axes[0], depths):
    for name, label in names.items():
      for i, r in enumerate(runs_of(res, prefix, name, depth, s)):
        steps, acc = zip(*r["curve"])
        ax.plot(steps, acc, color=colours[name], lw=1, alpha=0.7, label=label if i == 0 else None)
    targets = [r["target"] for r in runs_of(res, prefix, "scratch", depth, s)]
    ax.axhline(float(np.mean(targets)), color="k", ls=":", lw=1, label="scratch converged (mean)")
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(left=0)
    ax.set_ylim(max(0.0, min(targets) - 0.25), 1.0)
    ax.set_title(f"depth {depth}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("held-out accuracy")
  axes[0][0].legend(fontsize=7, loc="lower right")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
  """A markdown table's lines."""
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(row) + " |" for row in rows])


def target_cell(r: dict) -> str:
  """Scratch's converged accuracy over seeds, flagged when a seed did not plateau."""
  return f"{np.mean(r['target']):.4f} ± {np.std(r['target']):.4f}" + ("" if r["converged"] else " (not plateaued)")


def acc0_cell(r: dict) -> str:
  return f"{r['des_acc0']:.3f} / {r['interp_acc0']:.3f}"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run of every stage, minutes)")
  p.add_argument("--out", default=None, help="where stages are cached (default runs/learngene_mnist[_quick])")
  p.add_argument("--part", default="all", choices=("all", "main", "transfer"),
                 help="with --seeds: only the main study's or the transfer's stages")
  p.add_argument("--depths", default="", help="comma-separated: with --seeds, only these depths' stages")
  p.add_argument("--seeds", default="", help="comma-separated: run only these seeds' stages and stop (a second "
                 "process can fill the same --out in parallel; a plain rerun then reports)")
  args = p.parse_args()
  mode = "quick" if args.quick else "full"
  s = SETTINGS[mode]
  if args.seeds:
    s = {**s, "seeds": tuple(int(k) for k in args.seeds.split(","))}
    if args.depths:
      s = {**s, "depths": tuple(int(k) for k in args.depths.split(","))}
  args.out = args.out or os.path.join(REPO, "runs", f"learngene_mnist{'_quick' if args.quick else ''}")
  # compiled steps are shared by seeds (same shapes): a persistent cache saves a recompile each
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t0 = time.perf_counter()
  res = study(args, s)
  if args.seeds or args.part != "all":
    print(f"{args.part} stages of seeds {list(s['seeds'])} done in {time.perf_counter() - t0:.0f}s; rerun without --seeds "
          "to report")
    return
  n_depths = len(s["depths"])
  charge = s["aux_steps"] / n_depths
  teacher_acc = res["teacher"]["curve"][-1][1]
  aux_acc = [res[f"aux_s{k}"]["curve"][-1][1] for k in s["seeds"]]
  plain_acc = [res[f"plain6_s{k}"]["curve"][-1][1] for k in s["seeds"]]
  lines = [f"mode {mode}; data {res['dataset']}; seeds {list(s['seeds'])}; "
           f"teacher (CNN, {s['teacher_steps']} steps): held-out accuracy {teacher_acc:.4f}; "
           f"auxiliary (depth {AUX_DEPTH}, learngene, distilled, {s['aux_steps']} steps): "
           f"{np.mean(aux_acc):.4f} ± {np.std(aux_acc):.4f}; plain depth {AUX_DEPTH} trained the same way: "
           f"{np.mean(plain_acc):.4f} ± {np.std(plain_acc):.4f}",
           f"plateau: mean held-out accuracy over the last {s['window']} steps gains < {s['delta']:.4f} over "
           f"the {s['window']} before (earliest stop {s['min_steps']}, cap {s['max_steps']}); reach: first "
           f"evaluation whose 3-evaluation trailing mean >= scratch's converged accuracy; evaluations every "
           f"10 steps to 200, 25 to 1,000, 50 after (step 0 included)",
           f"charged = plus aux steps spread over {n_depths} depths ({charge:.0f} per depth; the same for "
           f"interp's plain depth-6 source); speedups: geometric mean over seeds (min-max)", ""]
  rows, minima = analyse(res, s, "", s["depths"], ("des", "kd", "interp"), charge)
  lines += md_table(["depth", "scratch converged acc", "scratch steps to it", "descendant", "scratch+KD",
                     "interpolated", "acc at step 0 (des / interp)", "speedup des (uncharged)",
                     "speedup des (charged)", "des vs KD (charged)", "des vs interp (charged)"],
                    [[str(r["depth"]), target_cell(r), r["scratch"], r["des"], r["kd"], r["interp"], acc0_cell(r),
                      fmt_speed(r["des_speed"]), fmt_speed(r["des_speed_c"]), fmt_speed(r["des_vs_kd"]),
                      fmt_speed(r["des_vs_interp"])] for r in rows])
  worst_res = max(max(r[m + "_res"] for m in ("des", "kd", "interp")) for r in rows)
  lines.append(f"\nresolution: a reach at step t lies in (t - interval, t]; the largest interval / t over every "
               f"reached run is {worst_res:.1%} (0 when reached at step 0)")

  t_rows, t_min = analyse(res, s, "t_", s["transfer_depths"], ("des", "interp"), charge)
  lines += ["", "transfer: learngene (and plain depth-6 control) learned on digits 0-4 by labels; descendants with a "
            "fresh head on digits 5-9"]
  lines += md_table(["depth", "scratch converged acc", "scratch steps", "descendant", "interpolated",
                     "acc at step 0 (des / interp)", "speedup des (charged)", "des vs interp (charged)"],
                    [[str(r["depth"]), target_cell(r), r["scratch"], r["des"], r["interp"], acc0_cell(r),
                      fmt_speed(r["des_speed_c"]), fmt_speed(r["des_vs_interp"])] for r in t_rows])

  per_depth = sum(res[f"scratch_L{d}_s{s['seeds'][0]}"]["parameters_stored"] for d in s["depths"])
  gene = res[f"aux_s{s['seeds'][0]}"]["parameters_stored"]
  lines.append(f"\nparameters stored: one pretrained model per depth {per_depth:,}; learngene + shared parts "
               f"{gene:,}")
  converged = int(all(r["converged"] for r in rows + t_rows))
  results_dir = RESULTS if mode == "full" else os.path.join(args.out, "results")
  figs = [plot(res, s, "", s["depths"], {"scratch": "scratch", "des": "descendant", "kd": "scratch + KD",
                                          "interp": "interpolated control"},
               os.path.join(results_dir, f"learngene_mnist{'' if mode == 'full' else '_quick'}.png"),
               "TLEG on MNIST: held-out accuracy vs steps"),
          plot(res, s, "t_", s["transfer_depths"], {"scratch": "scratch", "des": "descendant (fresh head)",
                                                     "interp": "interpolated control (fresh head)"},
               os.path.join(results_dir, f"learngene_transfer{'' if mode == 'full' else '_quick'}.png"),
               "transfer 0-4 -> 5-9: held-out accuracy vs steps")]
  lines.append(f"plots: {', '.join(os.path.relpath(f, REPO) for f in figs)}; wall time {time.perf_counter() - t0:.0f}s "
               f"(cached stages are read back)")
  lines.append(f"min_speedup={minima['des_speed_c']:.2f} min_speedup_vs_kd={minima['des_vs_kd']:.2f} "
               f"min_speedup_vs_interp={minima['des_vs_interp']:.2f} seeds={len(s['seeds'])} converged={converged} "
               f"stored_ratio={per_depth / gene:.2f}")
  text = "\n".join(lines)
  with open(os.path.join(results_dir, f"learngene_mnist{'' if mode == 'full' else '_quick'}.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
