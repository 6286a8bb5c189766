"""Torch-exact layers for the MobileNetV3 port: conv, batch norm, activations.

Each matches its torch counterpart numerically (padding, eps, momentum,
running-variance update, initialisation), so converted torchvision weights
give torchvision's outputs. The depthwise convolution has three
implementations (depthwise.py; `resolve_depthwise_impl`): XLA:CPU runs the
grouped convolution 5-8x slower than a sum of shifted slices, and the
autodiff backward of the slices 2-3x slower than a hand-written one. Outside
'grouped', 1x1 convolutions are matmuls (their convolution backward is
2-5x slower on XLA:CPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asrid_jax.models import depthwise

DepthwiseImpl = depthwise.DepthwiseImpl

# torchvision's BatchNorm2d(eps=0.001, momentum=0.01); flax-style momentum is
# the weight of the OLD running average, i.e. 1 - torch momentum.
BN_EPS = 1e-3
BN_MOMENTUM = 0.99
# torch's kaiming_normal_(mode='fan_out') for convs, N(0, 0.01) for linears.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_linear_init = nnx.initializers.normal(0.01)


class FrozenParam(nnx.Variable):
  """A parameter excluded from training (frozen batch-norm scale and bias).

  Not a subclass of `nnx.Param`, so `wrt=nnx.Param` filters leave it out.
  """


# Everything a weights file holds: trainable and frozen parameters and the
# batch-norm statistics (not the dropout RNG state).
WEIGHTS = nnx.Any(nnx.Param, FrozenParam, nnx.BatchStat)


def _activation(name: str | None, x: jax.Array) -> jax.Array:
  if name is None:
    return x
  if name == "relu":
    return jax.nn.relu(x)
  if name == "hardswish":
    # torch: x * relu6(x + 3) / 6, the same formula as jax.nn.hard_swish.
    return jax.nn.hard_swish(x)
  raise ValueError(f"unknown activation {name!r}")


def resolve_depthwise_impl(impl: str) -> str:
  """'auto' -> the fastest measured form for JAX's backend (depthwise.AUTO)."""
  return depthwise.resolve(impl)


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 1x1 convolution, NHWC x (C, O), with a hand-written backward.

  The backward multiplies on the pixels flattened to rows, (N*H*W, C):
  XLA:CPU's derived backward of the 4-d dot_general puts transposes around
  the weight gradient's GEMM and runs 1.1-3x slower (fwd + bwd of single
  layers at 95 px, batch 8). The forward stays the 4-d dot_general, which
  fuses with what follows it (flattening it there slowed inference).
  """
  return jax.lax.dot_general(x, kernel, (((3,), (0,)), ((), ())))


def _pointwise_fwd(x, kernel):
  return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, grad):
  x, kernel = residuals
  rows = grad.reshape(-1, grad.shape[-1])
  dx = jnp.dot(rows, kernel.T).reshape(x.shape)
  dkernel = jnp.dot(x.reshape(-1, x.shape[-1]).T, rows)
  return dx, dkernel.astype(kernel.dtype)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


class Conv2d(nnx.Module):
  """Bias-free k x k convolution (optionally depthwise) with torch padding.

  The kernel is HWIO, `(k, k, in // groups, out)`: a depthwise kernel is
  `(k, k, 1, C)`, the layout `feature_group_count=C` expects. Padding is
  `(k - 1) // 2` on every side, as torch's Conv2dNormActivation; 'SAME'
  would pad asymmetrically for stride 2 on even sizes.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    dtype: Any = jnp.float32,
    depthwise_impl: DepthwiseImpl = "auto",
    rngs: nnx.Rngs,
  ):
    if groups not in (1, in_features) or (
      groups > 1 and out_features != in_features
    ):
      raise ValueError("only dense or depthwise convolutions are supported")
    self.kernel_size = kernel_size
    self.stride = stride
    self.groups = groups
    self.dtype = dtype
    resolve_depthwise_impl(depthwise_impl)  # validate early
    self.depthwise_impl = depthwise_impl
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    # torch's kaiming fan_out is out * k * k for a depthwise (C, 1, k, k)
    # kernel too, the same as the HWIO (k, k, 1, C) fan_out here.
    self.kernel = nnx.Param(_conv_init(rngs.params(), shape, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    pad = (self.kernel_size - 1) // 2
    # Resolved at trace time, so `set_attributes(depthwise_impl=...)` works
    # and 'auto' follows the backend the function is compiled for.
    impl = resolve_depthwise_impl(self.depthwise_impl)
    if self.groups > 1:
      return depthwise.depthwise_conv(x, kernel, self.stride, impl)
    if self.kernel_size == 1 and self.stride == 1 and impl != "grouped":
      # A 1x1 convolution is a matmul over channels. XLA:CPU runs its
      # backward as a dot 2-5x faster than as a convolution; 'grouped'
      # keeps XLA's own convolutions everywhere.
      return pointwise_conv(x, kernel[0, 0])
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=(self.stride, self.stride),
      padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=self.groups,
    )


class BatchNorm2d(nnx.Module):
  """torch BatchNorm2d semantics over NHWC (statistics in float32).

  Training normalises with the biased batch variance and updates the running
  variance with the unbiased one, exactly as torch does.
  """

  def __init__(
    self,
    num_features: int,
    *,
    eps: float = BN_EPS,
    momentum: float = BN_MOMENTUM,
    dtype: Any = jnp.float32,
    frozen: bool = False,
  ):
    param_type = FrozenParam if frozen else nnx.Param
    self.scale = param_type(jnp.ones((num_features,), jnp.float32))
    self.bias = param_type(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.eps = eps
    self.momentum = momentum
    self.dtype = dtype
    self.frozen = frozen
    self.use_running_average = False

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.use_running_average or self.frozen:
      mean, var = self.mean[...], self.var[...]
    else:
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
      n = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1.0 - m) * mean
      self.var[...] = m * self.var[...] + (1.0 - m) * unbiased
    mul = self.scale[...] * jax.lax.rsqrt(var + self.eps)
    add = self.bias[...] - mean * mul
    return x.astype(self.dtype) * mul.astype(self.dtype) + add.astype(
      self.dtype
    )
