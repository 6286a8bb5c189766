"""layers.tap_conv / layers.conv_general_dilated against XLA's convolution.

tap_conv takes a dense stride-1 convolution's kernel gradient as one GEMM
per tap; its values and both gradients must be XLA's own, and
conv_general_dilated must route only the convolutions it handles to it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asrid_jax.models import attention, layers

_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, kernel, padding, strides=(1, 1), **kw):
  return jax.lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=_NHWC, **kw
  )


def _value_and_grads(conv, x, kernel, g):
  def loss(x, kernel):
    y = conv(x, kernel)
    return jnp.vdot(y.astype(jnp.float32), g.astype(jnp.float32)), y

  (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, kernel)
  return y, grads


def _inputs(shape, k, cin, cout, dtype, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (*shape, cin), jnp.float32).astype(dtype)
  kernel = jax.random.normal(kk, (k, k, cin, cout), jnp.float32) / k
  return x, kernel.astype(dtype)


def _uses_tap_conv(fn, *args) -> bool:
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
  "shape,k,padding",
  [
    ((2, 9, 9), 3, ((1, 1), (1, 1))),  # odd size, the texture conv's case
    ((2, 8, 10), 3, ((1, 1), (1, 1))),  # even, non-square
    ((1, 7, 6), 5, ((2, 2), (2, 2))),
    ((2, 6, 7), 3, ((0, 1), (1, 0))),  # asymmetric ('SAME'-like) padding
    ((2, 5, 5), 3, ((0, 0), (0, 0))),  # 'VALID'
    ((2, 4, 5), 1, ((0, 0), (0, 0))),
  ],
)
def test_tap_conv_value_and_gradients_match_lax(dtype, shape, k, padding):
  x, kernel = _inputs(shape, k, 5, 4, dtype)
  out_shape = jax.eval_shape(lambda a, b: _lax(a, b, padding), x, kernel)
  g = jax.random.normal(jax.random.key(7), out_shape.shape, jnp.float32)
  g = g.astype(dtype)
  got_y, got = _value_and_grads(
    lambda a, b: layers.tap_conv(a, b, padding), x, kernel, g
  )
  want_y, want = _value_and_grads(
    lambda a, b: _lax(a, b, padding), x, kernel, g
  )
  tol = 1e-5 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(
    np.asarray(got_y, np.float32), np.asarray(want_y, np.float32), tol, tol
  )
  for a, b in zip(got, want, strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    scale = float(np.abs(np.asarray(b, np.float32)).max())
    np.testing.assert_allclose(
      np.asarray(a, np.float32),
      np.asarray(b, np.float32),
      rtol=tol,
      atol=tol * scale,
    )


@pytest.fixture
def tap_backend(monkeypatch):
  """tap_conv enabled for the backend the tests run on (CPU in CI)."""
  monkeypatch.setattr(
    layers, "TAP_KERNEL_GRAD_BACKENDS", (jax.default_backend(),)
  )


def test_conv_general_dilated_routes_only_what_tap_conv_handles(tap_backend):
  x, kernel = _inputs((2, 8, 8), 3, 4, 4, jnp.float32)
  pads = ((1, 1), (1, 1))
  handled = {
    "explicit padding": lambda a, b: layers.conv_general_dilated(
      a, b, (1, 1), pads, dimension_numbers=_NHWC
    ),
    "'SAME'": lambda a, b: layers.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=_NHWC
    ),
  }
  passed_on = {
    "stride 2": lambda a, b: layers.conv_general_dilated(
      a, b, (2, 2), pads, dimension_numbers=_NHWC
    ),
    "dilated kernel": lambda a, b: layers.conv_general_dilated(
      a, b, (1, 1), pads, rhs_dilation=(2, 2), dimension_numbers=_NHWC
    ),
    "grouped": lambda a, b: layers.conv_general_dilated(
      a,
      b[:, :, :2],
      (1, 1),
      pads,
      dimension_numbers=_NHWC,
      feature_group_count=2,
    ),  # fmt: skip
    "NCHW": lambda a, b: layers.conv_general_dilated(
      a.transpose(0, 3, 1, 2), b.transpose(3, 2, 0, 1), (1, 1), pads
    ),
    "negative padding": lambda a, b: layers.conv_general_dilated(
      a, b, (1, 1), ((-1, 1), (1, 1)), dimension_numbers=_NHWC
    ),
    "precision": lambda a, b: layers.conv_general_dilated(
      a,
      b,
      (1, 1),
      pads,
      dimension_numbers=_NHWC,
      precision=jax.lax.Precision.HIGHEST,
    ),  # fmt: skip
    "preferred_element_type": lambda a, b: layers.conv_general_dilated(
      a,
      b,
      (1, 1),
      pads,
      dimension_numbers=_NHWC,
      preferred_element_type=jnp.float32,
    ),  # fmt: skip
  }
  for name, fn in handled.items():
    assert _uses_tap_conv(fn, x, kernel), name
  for name, fn in passed_on.items():
    assert not _uses_tap_conv(fn, x, kernel), name
  # Whichever way, the values are lax's.
  np.testing.assert_allclose(
    handled["'SAME'"](x, kernel), _lax(x, kernel, "SAME"), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    passed_on["stride 2"](x, kernel),
    _lax(x, kernel, pads, strides=(2, 2)),
    rtol=1e-5,
    atol=1e-5,
  )


def test_other_backends_keep_xla_convolution(tap_backend, monkeypatch):
  x, kernel = _inputs((1, 6, 6), 3, 3, 2, jnp.float32)

  def fn(a, b):
    return layers.conv_general_dilated(
      a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC
    )

  assert _uses_tap_conv(fn, x, kernel)
  monkeypatch.setattr(layers, "TAP_KERNEL_GRAD_BACKENDS", ("no-backend",))
  # A new function object: JAX caches the trace of the first one.
  assert not _uses_tap_conv(lambda a, b: fn(a, b), x, kernel)


def test_texture_enhancement_matches_plain_nnx_conv(tap_backend):
  """The attention module's convolutions through conv_general_dilated give
  what nnx.Conv with lax's convolution gives: outputs and every gradient."""
  module = attention.TextureEnhancement(6, 8, rngs=nnx.Rngs(0))
  plain = attention.TextureEnhancement(6, 8, rngs=nnx.Rngs(0))
  plain.conv.conv_general_dilated = jax.lax.conv_general_dilated
  x = jax.random.normal(jax.random.key(1), (3, 9, 7, 6))
  g = jax.random.normal(jax.random.key(2), (3, 9, 7, 8))

  def run(m):
    def loss(m, x):
      return jnp.vdot(m(x), g)

    return nnx.grad(loss, argnums=(nnx.DiffState(0, nnx.Param), 1))(m, x)

  assert _uses_tap_conv(lambda v: module.conv(v), jnp.zeros((1, 4, 4, 12)))
  (got_params, got_x), (want_params, want_x) = run(module), run(plain)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
  got = jax.tree.leaves(nnx.to_pure_dict(got_params))
  want = jax.tree.leaves(nnx.to_pure_dict(want_params))
  assert len(got) == len(want) == 3  # conv kernel, BN scale and bias
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_kernel_gradient_over_an_explicitly_sharded_batch(tap_backend):
  """Under jax.sharding.AxisType.Explicit the per-tap GEMMs contract the
  sharded batch; the kernel gradient comes back replicated and equal to
  lax's."""
  n = min(jax.device_count(), 8)
  mesh = jax.make_mesh(
    (n,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,)
  )
  x, kernel = _inputs((n, 6, 5), 3, 4, 3, jnp.float32)
  pads = ((1, 1), (1, 1))

  def grads(conv):
    def loss(x, kernel):
      return jnp.sum(jnp.sin(conv(x, kernel, pads)))

    return jax.jit(jax.grad(loss, (0, 1)))

  def via_router(a, b, p):
    return layers.conv_general_dilated(a, b, (1, 1), p, dimension_numbers=_NHWC)

  with jax.set_mesh(mesh):
    xs = jax.sharding.reshard(x, jax.sharding.PartitionSpec("data"))
    assert _uses_tap_conv(lambda a, b: via_router(a, b, pads), xs, kernel)
    dx, dk = grads(via_router)(xs, kernel)
    assert jax.typeof(dk).sharding.spec == jax.sharding.PartitionSpec(
      None, None, None, None
    )
    assert jax.typeof(dx).sharding.spec[0] == "data"
  want_dx, want_dk = grads(_lax)(x, kernel)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5)


def test_float64_kernel_gradient_keeps_float64():
  """The taps accumulate in the inputs' type when it is wider than f32: a
  float64 gradient agrees with lax's to float64 precision, which f32
  accumulation (relative error ~1e-7) would not."""
  with jax.enable_x64(True):
    x, kernel = _inputs((2, 7, 6), 3, 5, 4, jnp.float64)
    pads = ((1, 1), (1, 1))

    def dk(conv):
      def loss(kernel):
        return jnp.sum(jnp.cos(conv(x, kernel, pads)))

      return jax.grad(loss)(kernel)

    got = dk(layers.tap_conv)
    want = dk(_lax)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
