"""Orbax checkpoints of the whole run: the train state (params, optimizer state, extra
model state such as FP8 scales, each in its own dtype and sharding) and the data
iterator (grain's orbax handler: one JSON state per process, so multi-host runs resume
every process's slice of the data)."""
from __future__ import annotations

import collections
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, keep: int = 3, keep_period: int | None = None) -> ocp.CheckpointManager:
  """Keeps the newest `keep` checkpoints, plus every `keep_period`-th step if given."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def finished(workdir: str, steps: int) -> bool:
  """Whether the run in `workdir` has a checkpoint at exactly `steps` (a finished stage)."""
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and manager(path).latest_step() == steps


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None) -> None:
  """State (and the data iterator's position, if given) at `step`, asynchronously."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    import grain  # only runs with a data iterator need it (a GPU bench imports the loop without)
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings: restore straight into the layout."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any, data_iter: Any = None):
  """(step, state) of the newest checkpoint, or None when there is none; `data_iter`
  (a fresh iterator of the same dataset) is moved to where the run stopped."""
  step = mngr.latest_step()
  if step is None:
    return None
  _check_dtypes(str(mngr.directory), step, abstract_state)
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    import grain
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return step, restored["state"]


def _saved_state(directory: str, step: int) -> Any:
  """The metadata tree (shape, dtype per array) of the train state saved at `step`."""
  mngr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  return mngr.item_metadata(step)["state"]


def _check_dtypes(directory: str, step: int, abstract_state: Any) -> None:
  """Raise if the checkpoint's arrays are not of the dtypes the state expects: orbax would
  cast each to the target dtype, numerically, so e.g. FP8 values restored into the bytes a
  `ScaledTensor` now keeps would come back as other numbers, silently."""
  count = lambda leaves: collections.Counter(str(x.dtype) for x in leaves)
  saved, wanted = count(jax.tree.leaves(_saved_state(directory, step))), count(jax.tree.leaves(abstract_state))
  if saved == wanted:
    return
  hint = ""
  if any(d.startswith("float8") for d in saved - wanted) and "uint8" in wanted - saved:
    hint = (" It holds FP8 arrays as float8: it was written before jaxlab kept 8-bit formats as their bytes"
            " (fp8.formats.ScaledTensor, 2026-12-07); resume it with that earlier version.")
  raise ValueError(f"checkpoint {directory} step {step}: arrays of dtypes {dict(saved - wanted)} where this run's state "
                   f"has {dict(wanted - saved)} (a different config or jaxlab version?); restoring would cast them."
                   + hint)


def restore_params(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, params) of a run's latest (or given) checkpoint in host (CPU) memory, without
  knowing its optimizer, whatever devices and processes saved it (a run on 2 hosts x 4
  devices restores on a laptop): for teachers, learngenes and exports."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  mngr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  metadata = mngr.item_metadata(step)["state"]
  try:  # host memory: a teacher trained on many accelerators need not fit on one
    device = jax.local_devices(backend="cpu")[0]  # this process's: jax.devices lists every process's
  except RuntimeError:  # JAX_PLATFORMS without cpu
    device = jax.local_devices()[0]
  one_device = jax.sharding.SingleDeviceSharding(device)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  return step, state["params"]
