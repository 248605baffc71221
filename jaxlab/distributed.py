"""Multi-process runs: JAX's multi-controller runtime set up from the environment.

Every process runs the same program (`python -m jaxlab.main ...`); `initialize()` joins
them before anything touches a device. Which setup applies is read from the environment:

  explicit   JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i
             (what launch/multiprocess.sh sets; works anywhere)
  SLURM      inside `srun` with more than one task (SLURM_STEP_NODELIST, SLURM_NTASKS > 1):
             JAX reads the coordinator, count and rank from SLURM's variables
  TPU VM     JAXLAB_DISTRIBUTED=tpu (set by launch/tpu_vm.sh on every worker): JAX finds
             the slice's workers from the TPU VM metadata
  none       a single process (the default when nothing above is set)

JAXLAB_DISTRIBUTED=off|auto|explicit|slurm|tpu forces a choice. JAXLAB_HEARTBEAT_TIMEOUT
(seconds, default 100) bounds how long the others run on after a process dies: JAX's
coordination service then stops every process with "the JAX distributed service detected
fatal errors", instead of letting them hang in a collective. JAXLAB_INIT_TIMEOUT (default
300) bounds the wait for all processes to join, JAXLAB_BARRIER_TIMEOUT (default 86400)
a `barrier`.

`python -m jaxlab.distributed --processes N -- COMMAND ...` starts N processes of COMMAND
on this machine (coordinator on 127.0.0.1, simulated CPU devices, gloo collectives): a
multi-host run in miniature, used by launch/multiprocess.sh and the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

MODES = ("auto", "off", "explicit", "slurm", "tpu")
EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class DistributedError(RuntimeError):
  """The environment describes a multi-process run that cannot be set up."""


def _int_var(environ: Mapping[str, str], name: str, default: int) -> int:
  text = environ.get(name, str(default))
  try:
    return int(text)
  except ValueError:
    raise DistributedError(f"{name}={text!r} is not an integer") from None


def plan(environ: Mapping[str, str]) -> tuple[str, dict] | None:
  """(setup name, kwargs for jax.distributed.initialize) from the environment, or None
  for a single process. Pure: tests call it with dicts."""
  mode = environ.get("JAXLAB_DISTRIBUTED", "auto").strip().lower() or "auto"
  if mode not in MODES:
    raise DistributedError(f"JAXLAB_DISTRIBUTED={mode!r} is not one of {MODES}")
  if mode == "off":
    return None
  timeouts = dict(initialization_timeout=_int_var(environ, "JAXLAB_INIT_TIMEOUT", 300),
                  heartbeat_timeout_seconds=_int_var(environ, "JAXLAB_HEARTBEAT_TIMEOUT", 100))
  present = [name for name in EXPLICIT_VARS if environ.get(name)]
  if mode == "explicit" or (mode == "auto" and present):
    missing = [name for name in EXPLICIT_VARS if name not in present]
    if missing:
      raise DistributedError(f"a multi-process run needs all of {', '.join(EXPLICIT_VARS)}; "
                             f"{', '.join(missing)} not set")
    count = _int_var(environ, "JAX_NUM_PROCESSES", 1)
    index = _int_var(environ, "JAX_PROCESS_ID", 0)
    if not 0 <= index < count:
      raise DistributedError(f"JAX_PROCESS_ID={index} is not in [0, JAX_NUM_PROCESSES={count})")
    return "explicit", dict(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"], num_processes=count,
                            process_id=index, **timeouts)
  in_srun = "SLURM_JOB_ID" in environ and "SLURM_STEP_NODELIST" in environ and "SLURM_PROCID" in environ
  if mode == "slurm" or (mode == "auto" and in_srun and _int_var(environ, "SLURM_NTASKS", 1) > 1):
    if not in_srun:
      raise DistributedError("JAXLAB_DISTRIBUTED=slurm outside `srun` (SLURM_JOB_ID, SLURM_STEP_NODELIST, "
                             "SLURM_PROCID not set)")
    return "slurm", dict(cluster_detection_method="slurm", **timeouts)
  if mode == "tpu":
    return "tpu", dict(timeouts)  # no address given: JAX reads the TPU VM metadata
  return None


def initialize(environ: Mapping[str, str] | None = None) -> tuple[str, dict] | None:
  """Join the processes the environment describes (call before any device is touched).
  Returns what `plan` chose; None (and nothing done) for a single process."""
  import jax

  chosen = plan(os.environ if environ is None else environ)
  if chosen is None or jax.distributed.is_initialized():
    return chosen
  source, kwargs = chosen
  # Cross-process collectives on CPU need an implementation (gloo is jax 0.10's default;
  # older versions had none). Harmless for GPU/TPU, which bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # connection refused, timeouts, bad addresses
    raise DistributedError(f"jax.distributed.initialize ({source}, {kwargs}) failed: {e}") from e
  print(f"distributed ({source}): process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local of {jax.device_count()} {jax.default_backend()} devices",
        file=sys.stderr, flush=True)
  return chosen


_barriers = 0  # every process passes the same barriers in the same order: same keys


def barrier(name: str) -> None:
  """Wait until every process gets here (a no-op for one process). Polls the coordination
  service's key-value store instead of running a device collective: gloo gives up after
  30 s, too short for one process's data preparation or scoring, and a short sleep keeps
  Ctrl-C working. JAXLAB_BARRIER_TIMEOUT (seconds, default 86400) bounds the wait."""
  import jax
  from jax._src import distributed as jax_distributed

  global _barriers
  count = jax.process_count()
  if count == 1:
    return
  _barriers += 1
  client = jax_distributed.global_state.client
  prefix = f"jaxlab/barrier/{_barriers}/{name}/"
  client.key_value_set(prefix + str(jax.process_index()), "here")
  deadline = time.monotonic() + _int_var(os.environ, "JAXLAB_BARRIER_TIMEOUT", 86400)
  while len(client.key_value_dir_get(prefix)) < count:
    if time.monotonic() > deadline:
      raise DistributedError(f"barrier {name!r}: only {len(client.key_value_dir_get(prefix))} of {count} "
                             "processes arrived before JAXLAB_BARRIER_TIMEOUT")
    time.sleep(0.2)


@contextlib.contextmanager
def main_process_first(name: str):
  """Process 0 runs the body first (e.g. preparing data or training a tokenizer into a
  shared folder), the others after it finished, so they reuse its output instead of
  racing to write the same files."""
  import jax

  if jax.process_count() == 1:
    yield
    return
  if jax.process_index() != 0:
    barrier(name)
  yield
  if jax.process_index() == 0:
    barrier(name)


# --- a local multi-process launcher ---------------------------------------------------

def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process
  may still take it before the coordinator binds it)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def with_device_count(xla_flags: str, count: int) -> str:
  """XLA_FLAGS with the simulated CPU device count set to `count` (replacing any)."""
  kept = [f for f in xla_flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
  return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={count}"])


def local_envs(num_processes: int, devices_per_process: int, port: int,
               environ: Mapping[str, str], heartbeat_timeout: int) -> list[dict[str, str]]:
  """The environment of each local process: explicit coordinator on 127.0.0.1, CPU
  devices simulated by XLA."""
  envs = []
  for index in range(num_processes):
    env = dict(environ)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(index), JAX_PLATFORMS="cpu",
               XLA_FLAGS=with_device_count(environ.get("XLA_FLAGS", ""), devices_per_process),
               JAXLAB_HEARTBEAT_TIMEOUT=str(heartbeat_timeout), PYTHONUNBUFFERED="1")
    env.pop("JAXLAB_DISTRIBUTED", None)
    envs.append(env)
  return envs


def _describe_exit(rc: int) -> str:
  if rc < 0:
    try:
      return f"was stopped by {signal.Signals(-rc).name}"
    except ValueError:
      return f"was stopped by signal {-rc}"
  return f"exited with status {rc}"


def _pump(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(prefix + line)
    out.flush()


def launch_local(num_processes: int, command: Sequence[str], *, devices_per_process: int = 4,
                 port: int | None = None, heartbeat_timeout: int = 20, grace: float | None = None,
                 out=None) -> int:
  """Run `command` as `num_processes` cooperating processes on this machine; their output
  is prefixed with [pI]. When one fails, the others are given `grace` seconds (default:
  the heartbeat timeout + 30 s) to stop on their own (JAX stops them once it notices),
  then killed. Returns 0 when all succeed, else the first failure's status."""
  out = out or sys.stdout
  port = port or free_port()
  grace = heartbeat_timeout + 30.0 if grace is None else grace
  envs = local_envs(num_processes, devices_per_process, port, os.environ, heartbeat_timeout)
  procs, pumps = [], []
  try:
    for index, env in enumerate(envs):
      proc = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1, errors="replace")
      procs.append(proc)
      print(f"[launch] process {index} pid {proc.pid}", file=out, flush=True)
      pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{index}] ", out), daemon=True)
      pump.start()
      pumps.append(pump)
    first_failure, deadline = None, None
    while any(p.poll() is None for p in procs):
      if first_failure is None:
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed:
          first_failure = failed[0]
          deadline = time.monotonic() + grace
          print(f"[launch] process {failed[0][0]} {_describe_exit(failed[0][1])}; waiting up to {grace:.0f} s "
                f"for the others to stop", file=out, flush=True)
      if deadline is not None and time.monotonic() > deadline:
        for i, p in enumerate(procs):
          if p.poll() is None:
            print(f"[launch] process {i} still running {grace:.0f} s after the failure; killing it",
                  file=out, flush=True)
            p.kill()
      time.sleep(0.1)
  except KeyboardInterrupt:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGINT)
    for p in procs:
      p.wait()
  for pump in pumps:
    pump.join(timeout=5)
  codes = [p.wait() for p in procs]
  if all(rc == 0 for rc in codes):
    return 0
  for i, rc in enumerate(codes):
    if rc != 0:
      print(f"[launch] process {i} {_describe_exit(rc)}", file=out, flush=True)
  if any(rc == -signal.SIGABRT for rc in codes):
    print("[launch] a process stopped with SIGABRT: JAX's distributed runtime aborts the surviving "
          "processes once one of them dies (its coordination service reports 'detected fatal errors', or the "
          "collective transport fails mid-step; see above). Rerun the same command to resume from the last "
          "checkpoint.", file=out, flush=True)
  failed = [rc for rc in codes if rc != 0]
  return failed[0] if failed[0] > 0 else 128 - failed[0]


def main(argv: Sequence[str] | None = None) -> int:
  """Command line of `python -m jaxlab.distributed`: parses `argv` and runs `launch_local`
  (or prints each process's environment with --dry-run). Returns the exit status. SIGTERM
  is handled like Ctrl-C, so a terminated launcher stops its processes too."""
  parser = argparse.ArgumentParser(prog="python -m jaxlab.distributed",
                                   description="Start N cooperating processes of COMMAND on this machine.")
  parser.add_argument("--processes", type=int, required=True)
  parser.add_argument("--devices-per-process", type=int, default=4, help="simulated CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)")
  parser.add_argument("--heartbeat-timeout", type=int, default=20,
                      help="seconds after which a dead process stops the others")
  parser.add_argument("--dry-run", action="store_true", help="print each process's environment and command")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("no command given (put it after --)")
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error("--processes and --devices-per-process must be positive")
  if args.dry_run:
    port = args.port or 12355
    envs = local_envs(args.processes, args.devices_per_process, port, {}, args.heartbeat_timeout)
    for env in envs:
      print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command))
    return 0
  def stop(signum, frame):  # a terminated launcher takes its processes with it
    raise KeyboardInterrupt
  signal.signal(signal.SIGTERM, stop)
  return launch_local(args.processes, command, devices_per_process=args.devices_per_process,
                      port=args.port or None, heartbeat_timeout=args.heartbeat_timeout)


if __name__ == "__main__":
  sys.exit(main())
