"""Launch scripts' --dry-run output for a 2-node run, and which distributed setup the
environment selects (jaxlab.distributed.plan, a pure function of the environment)."""
import os
import pathlib
import shlex
import subprocess

import pytest

from jaxlab import distributed

REPO = pathlib.Path(__file__).resolve().parents[2]
MESH = "mesh=(('data', -1), ('model', 8))"


def dry_run(script, *args, **env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU", "ZONE", "NODES", "GPUS_"))}
  result = subprocess.run([str(REPO / "launch" / script), "--dry-run", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, cwd=REPO)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  return shlex.split(lines[0])


def test_slurm_dry_run_two_nodes_one_process_per_gpu():
  words = dry_run("slurm_gpu.sbatch", "configs/quickstart.py", "runs/q", MESH, "train.steps=10",
                  NODES="2", GPUS_PER_NODE="8", PYTHON="python3")
  assert words == ["srun", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--kill-on-bad-exit=1",
                   f"--chdir={REPO}", "env", "JAXLAB_DISTRIBUTED=slurm", "python3", "-m", "jaxlab.main",
                   "--config", "configs/quickstart.py", "--workdir", "runs/q", MESH, "train.steps=10"]


def test_slurm_dry_run_inside_a_job_takes_its_counts():
  words = dry_run("slurm_gpu.sbatch", "configs/quickstart.py", "runs/q", SLURM_JOB_NUM_NODES="2",
                  SLURM_GPUS_ON_NODE="4", SLURM_SUBMIT_DIR="/home/me/jaxlab", PYTHON="python3")
  assert words[:6] == ["srun", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--kill-on-bad-exit=1",
                       "--chdir=/home/me/jaxlab"]


def test_tpu_vm_dry_run_runs_on_all_workers():
  words = dry_run("tpu_vm.sh", "configs/quickstart.py", "gs://bucket/runs/q", MESH, TPU="my-v4-16",
                  ZONE="us-central2-b", PROJECT="proj", PYTHON=".venv/bin/python")
  assert words[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-16", "--zone=us-central2-b",
                       "--worker=all", "--project=proj"]
  assert words[9].startswith("--command=")
  remote = shlex.split(words[9].removeprefix("--command="))
  assert remote == ["cd", "~/jaxlab", "&&", "JAXLAB_DISTRIBUTED=tpu", ".venv/bin/python", "-m", "jaxlab.main",
                    "--config", "configs/quickstart.py", "--workdir", "gs://bucket/runs/q", MESH]


def test_tpu_vm_needs_a_name_and_zone():
  result = subprocess.run([str(REPO / "launch" / "tpu_vm.sh"), "--dry-run", "c.py", "w"], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k not in ("TPU", "ZONE")})
  assert result.returncode == 2 and "TPU=NAME ZONE=ZONE" in result.stderr


def test_multiprocess_dry_run_one_line_per_process():
  result = subprocess.run([str(REPO / "launch" / "multiprocess.sh"), "--dry-run", "2", "configs/quickstart.py:toy",
                           "train.steps=3"], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PORT": "23456", "DEVICES": "4", "WORKDIR": "runs/mp"})
  assert result.returncode == 0, result.stderr
  lines = [shlex.split(l) for l in result.stdout.strip().splitlines()]
  assert len(lines) == 2
  for index, words in enumerate(lines):
    env = dict(w.split("=", 1) for w in words if w.startswith(("JAX_", "XLA_FLAGS=")))
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:23456"
    assert env["JAX_NUM_PROCESSES"] == "2" and env["JAX_PROCESS_ID"] == str(index)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    command = words[words.index("-m") - 1:]
    assert command[1:] == ["-m", "jaxlab.main", "--config", "configs/quickstart.py:toy", "--workdir", "runs/mp",
                           "train.steps=3"]


def test_plan_from_the_environment():
  assert distributed.plan({}) is None
  assert distributed.plan({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                           "SLURM_STEP_NODELIST": "n1"}) is None  # one task: nothing to join
  source, kwargs = distributed.plan({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                                     "JAX_PROCESS_ID": "3", "JAXLAB_HEARTBEAT_TIMEOUT": "15"})
  assert source == "explicit"
  assert kwargs == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
                        initialization_timeout=300, heartbeat_timeout_seconds=15)
  source, kwargs = distributed.plan({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_PROCID": "5",
                                     "SLURM_STEP_NODELIST": "gpu[01-02]"})
  assert source == "slurm" and kwargs["cluster_detection_method"] == "slurm"
  assert distributed.plan({"JAXLAB_DISTRIBUTED": "tpu"})[0] == "tpu"
  assert distributed.plan({"JAXLAB_DISTRIBUTED": "off", "JAX_COORDINATOR_ADDRESS": "h:1"}) is None


@pytest.mark.parametrize("environ, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"not in \[0, "),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "not an integer"),
    ({"JAXLAB_DISTRIBUTED": "mpi"}, "is not one of"),
    ({"JAXLAB_DISTRIBUTED": "slurm"}, "outside `srun`"),
])
def test_plan_errors_name_the_variable(environ, message):
  with pytest.raises(distributed.DistributedError, match=message):
    distributed.plan(environ)


def test_with_device_count_replaces_the_flag():
  assert distributed.with_device_count("--xla_force_host_platform_device_count=8 --foo", 4) == \
      "--foo --xla_force_host_platform_device_count=4"
