"""Quantize/dequantize against ml_dtypes casts and values worked by hand."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxlab.fp8 import formats
from jaxlab.fp8.formats import E4M3, E5M2


def test_quantize_matches_ml_dtypes_cast_and_hand_values():
  x = np.array([0.3, -1.0, 2.0, 100.0, 0.0], np.float32)
  q = np.asarray(formats.quantize(jnp.asarray(x), E4M3, 0.5))
  np.testing.assert_array_equal(q, (x / 0.5).astype(ml_dtypes.float8_e4m3fn))
  # 0.3 / 0.5 = 0.6 lies between E4M3's 0.5625 and 0.625 (3 mantissa bits): nearest is 0.625.
  assert float(q[0]) == 0.625
  assert float(formats.dequantize(jnp.asarray(q), 0.5)[0]) == 0.3125


def test_saturation_and_non_finite_inputs():
  x = jnp.array([1000.0, -1e6, jnp.inf, -jnp.inf, jnp.nan])
  q = np.asarray(formats.quantize(x, E4M3, 1.0)).astype(np.float32)
  # A plain cast would give NaN for 1000 (e4m3fn has no inf); clipping saturates at 448.
  assert np.isnan(np.asarray(x[:1]).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)).all()
  np.testing.assert_array_equal(q[:4], [448.0, -448.0, 448.0, -448.0])
  assert np.isnan(q[4])
  q5 = np.asarray(formats.quantize(jnp.array([60000.0, -1e9]), E5M2, 1.0)).astype(np.float32)
  np.testing.assert_array_equal(q5, [57344.0, -57344.0])


def test_scales_by_hand():
  assert float(formats.scale_for(448.0, E4M3)) == 1.0
  assert float(formats.scale_for(896.0, E4M3)) == 2.0
  assert float(formats.scale_for(448.0, E4M3, margin=1)) == 2.0
  # 500 / 448 = 1.116 -> the next power of two is 2, so 500 still fits (500 / 2 <= 448).
  assert float(formats.scale_for(500.0, E4M3, power_of_two=True)) == 2.0
  assert float(formats.scale_for(57344.0 / 4, E5M2, power_of_two=True)) == 0.25
  for bad in (0.0, jnp.inf, jnp.nan):
    assert float(formats.scale_for(bad, E4M3, fallback=3.0)) == 3.0
  # Power-of-two scales make dequantize(quantize(x)) exact wherever x is representable.
  x = jnp.array([0.75, -3.5, 0.015625])
  s = formats.scale_for(formats.amax(x), E4M3, power_of_two=True)
  np.testing.assert_array_equal(formats.dequantize(formats.quantize(x, E4M3, s), s), x)


def test_amax_ignores_nan_but_not_inf():
  assert float(formats.amax(jnp.array([1.0, jnp.nan, -2.0]))) == 2.0
  assert float(formats.amax(jnp.array([1.0, -jnp.inf]))) == np.inf


def test_per_layer_scales_for_stacked_parameters():
  x = jnp.stack([jnp.full((3, 4), 0.5), jnp.full((3, 4), -8.0)])
  t = formats.to_scaled(x, E4M3, stacked=True)
  assert t.scale.shape == (2, 1, 1)
  np.testing.assert_allclose(np.asarray(t.scale).ravel(), [0.5 / 448, 8.0 / 448])
  np.testing.assert_array_equal(np.asarray(t.values).astype(np.float32), np.stack([np.full((3, 4), 448.0),
                                                                                np.full((3, 4), -448.0)]))
  np.testing.assert_allclose(t.dequantize(), x, rtol=1e-6)


def test_fp8_is_kept_as_its_bytes_and_fp16_as_is():
  """A ScaledTensor holds E4M3 as its bytes (ml_dtypes' encoding of the same values), FP16
  as it is; a checkpoint restored without the state's structure ({"data", "scale"}) reads
  bytes as E4M3."""
  x = np.array([[0.5, -3.0], [448.0, 1e-3]], np.float32)
  t = formats.to_scaled(jnp.asarray(x), E4M3)
  assert t.dtype == E4M3 and t.data.dtype == np.uint8 and t.values.dtype == E4M3
  want = np.clip(x / np.float32(t.scale), -448, 448).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
  np.testing.assert_array_equal(np.asarray(t.data), want)
  restored = formats.plain({"w": {"data": np.asarray(t.data), "scale": np.asarray(t.scale)}})["w"]
  np.testing.assert_array_equal(np.asarray(restored), np.asarray(t.dequantize()))
  h = formats.to_scaled(jnp.asarray(x), jnp.float16)
  assert h.dtype == h.data.dtype == jnp.float16
