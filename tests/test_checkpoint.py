"""jaxlab.checkpoint: a restore whose target dtypes differ from the saved ones is refused
(orbax would cast each array numerically)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import checkpoint


def test_restore_refuses_dtypes_it_would_cast(tmp_path):
  state = {"w": jnp.array([0.5, -3.0, 448.0], jnp.float8_e4m3fn), "b": jnp.ones(2)}
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, 1, state)
  mngr.wait_until_finished()
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  same = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state)
  step, restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), same)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(restored["w"]).view(np.uint8), np.asarray(state["w"]).view(np.uint8))
  # The FP8 state as its bytes (what a ScaledTensor now keeps): orbax would hand back
  # uint8(0.5), uint8(-3.0), uint8(448.0), not the bytes 48, 196, 126.
  as_bytes = dict(same, w=jax.ShapeDtypeStruct((3,), jnp.uint8, sharding=one))
  with pytest.raises(ValueError, match=r"'float8_e4m3fn': 1\}.*'uint8': 1\}.*earlier version"):
    checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), as_bytes)
