"""Depthwise forms vs lax.conv_general_dilated and torch: values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asrid_jax.models import depthwise as dw


def _loss(impl, stride, pad):
  def loss(x, w):
    y = getattr(dw, impl)(x, w, stride, pad).astype(jnp.float32)
    # A fixed, non-constant cotangent so every output position matters.
    ct = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * ct), y

  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def _inputs(k, h, w, dtype, channels=6):
  x = jax.random.normal(jax.random.key(h * 10 + w), (2, h, w, channels))
  kern = jax.random.normal(jax.random.key(k), (k, k, 1, channels))
  return x.astype(dtype), kern.astype(dtype)


def _rel(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("impl", ["shifted", "shifted_vjp"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("hw", [(9, 9), (8, 10)])
def test_value_and_grad_match_grouped_conv(impl, dtype, stride, k, hw):
  pad = (k - 1) // 2
  x, w = _inputs(k, *hw, dtype)
  # Reference in float32 on the same (rounded) inputs.
  (_, ref_y), ref_g = _loss("grouped", stride, pad)(
    x.astype(jnp.float32), w.astype(jnp.float32)
  )
  (_, y), g = _loss(impl, stride, pad)(x, w)
  assert y.shape == ref_y.shape and y.dtype == jnp.float32
  assert g[0].dtype == x.dtype and g[1].dtype == w.dtype
  # bf16: one rounding of the inputs, then 'shifted_vjp' accumulates in f32;
  # 'shifted' (autodiff) accumulates its kernel gradient in bf16.
  tol = {"float32": 1e-5, "bfloat16": 2e-2 if impl == "shifted_vjp" else 6e-2}
  tol = tol[dtype]
  assert _rel(y, ref_y) < tol
  assert _rel(g[0], ref_g[0]) < tol, "input gradient"
  assert _rel(g[1], ref_g[1]) < tol, "kernel gradient"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
def test_shifted_vjp_grads_match_torch(stride, k):
  torch = pytest.importorskip("torch")
  pad = (k - 1) // 2
  x, w = _inputs(k, 11, 12, jnp.float32)
  (_, y), (gx, gw) = _loss("shifted_vjp", stride, pad)(x, w)
  tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(np.asarray(w).transpose(3, 2, 0, 1), requires_grad=True)
  ty = torch.nn.functional.conv2d(
    tx, tw, stride=stride, padding=pad, groups=x.shape[-1]
  )
  ct = torch.tensor(
    np.cos(np.arange(ty.numel(), dtype=np.float32)).reshape(np.asarray(y).shape)
  ).permute(0, 3, 1, 2)
  (ty * ct).sum().backward()
  assert _rel(y, ty.detach().permute(0, 2, 3, 1).numpy()) < 1e-5
  assert _rel(gx, tx.grad.permute(0, 2, 3, 1).numpy()) < 1e-5
  assert _rel(gw, tw.grad.permute(2, 3, 1, 0).numpy()) < 1e-5


def test_resolve_auto_per_backend_and_rejects_unknown():
  assert dw.resolve("auto", "cpu") == dw.AUTO["cpu"]
  assert dw.resolve("auto", "gpu") == "grouped"
  assert dw.resolve("shifted_vjp") == "shifted_vjp"
  with pytest.raises(ValueError, match="depthwise_impl"):
    dw.resolve("fast")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pointwise_conv_value_and_gradients_match_lax_conv(dtype):
  """layers.pointwise_conv (1x1 conv, hand-written backward on flattened
  rows) against XLA's own 1x1 convolution and its derived gradients."""
  from asrid_jax.models import layers

  kx, kk, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (2, 7, 5, 6), jnp.float32).astype(dtype)
  kernel = jax.random.normal(kk, (6, 4), jnp.float32).astype(dtype)
  g = jax.random.normal(kg, (2, 7, 5, 4), jnp.float32).astype(dtype)

  def ref(x, kernel):
    return jax.lax.conv_general_dilated(
      x, kernel[None, None], (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip

  def grads(f):
    return jax.grad(
      lambda x, k: jnp.vdot(f(x, k).astype(jnp.float32), g), (0, 1)
    )(x, kernel)

  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(
    np.asarray(layers.pointwise_conv(x, kernel), np.float32),
    np.asarray(ref(x, kernel), np.float32),
    rtol=tol,
    atol=tol,
  )
  for got, want in zip(grads(layers.pointwise_conv), grads(ref), strict=True):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(
      np.asarray(got, np.float32),
      np.asarray(want, np.float32),
      rtol=tol,
      atol=tol * 4,
    )
