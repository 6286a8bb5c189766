"""Torch-exact layers for the MobileNetV3 port: conv, batch norm, activations.

Each matches its torch counterpart numerically (padding, eps, momentum,
running-variance update, initialisation), so converted torchvision weights
give torchvision's outputs. The depthwise convolution has three
implementations (depthwise.py; `resolve_depthwise_impl`): XLA:CPU runs the
grouped convolution 5-8x slower than a sum of shifted slices, and the
autodiff backward of the slices 2-3x slower than a hand-written one. Outside
'grouped', 1x1 convolutions are matmuls (their convolution backward is
2-5x slower on XLA:CPU). Dense stride-1 convolutions outside the backbone
(the attention module's 3x3s) go through `conv_general_dilated`, which on
CPU takes their kernel gradient as one GEMM per tap (`tap_conv`).
"""

from __future__ import annotations

import functools
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


# Backends on which dense stride-1 convolutions take their kernel gradient
# as per-tap GEMMs (`conv_general_dilated`). CPU only, as measured: XLA:CPU
# runs the convolution-shaped kernel gradient of ASRID's 3x3 48 -> 64 texture
# conv at 48 px, batch 8, in 27.6-28.8 ms, the nine GEMMs in 11.5 ms, while
# its forward takes 7.5. Elsewhere (cuDNN) XLA's own is kept.
TAP_KERNEL_GRAD_BACKENDS = ("cpu",)
_NHWC = jax.lax.conv_dimension_numbers(
  (1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC")
)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Any,
  padding: Any,
  lhs_dilation: Any = None,
  rhs_dilation: Any = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  precision: Any = None,
  **kwargs: Any,
) -> jax.Array:
  """`lax.conv_general_dilated` with a faster kernel gradient where it pays.

  A drop-in for `nnx.Conv(conv_general_dilated=...)`. A dense, undilated,
  stride-1 NHWC x HWIO convolution with non-negative padding and no
  precision, preferred type or sharding given runs as `tap_conv` when the
  process's default backend (`jax.default_backend()`, read at trace time,
  not the device a computation is later placed on) is in
  `TAP_KERNEL_GRAD_BACKENDS`; anything else goes to
  `lax.conv_general_dilated` unchanged. `tap_conv` is a `jax.custom_vjp`,
  so those convolutions have no forward-mode derivative (`jax.jvp`,
  `jax.jacfwd`): set `TAP_KERNEL_GRAD_BACKENDS = ()` for that.
  """
  ones = (1,) * (lhs.ndim - 2)
  dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  pads = (
    jax.lax.padtype_to_pads(
      lhs.shape[1:3], rhs.shape[:2], window_strides, padding
    )
    if isinstance(padding, str) and lhs.ndim == 4
    else padding
  )
  if (
    lhs.ndim == 4
    and dims == _NHWC
    and tuple(window_strides) == ones
    and tuple(lhs_dilation or ones) == ones
    and tuple(rhs_dilation or ones) == ones
    and feature_group_count == 1
    and precision is None
    and not any(v is not None for v in kwargs.values())
    and not isinstance(pads, str)
    and all(lo >= 0 and hi >= 0 for lo, hi in pads)
    and jax.default_backend() in TAP_KERNEL_GRAD_BACKENDS
  ):
    return tap_conv(lhs, rhs, tuple((int(lo), int(hi)) for lo, hi in pads))
  return jax.lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )


def _dense_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tap_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  """Dense stride-1 NHWC x HWIO convolution, kernel gradient as k*k GEMMs.

  The forward and the input gradient are XLA's own. The kernel gradient of
  tap (i, j) is the shifted input window, flattened to rows (N*H*W, C_in),
  contracted over its rows with the output gradient's (N*H*W, C_out): one
  GEMM per tap, accumulated in at least float32, where XLA:CPU transposes
  both operands for a convolution-shaped reduction 2.4x slower. Reverse
  mode only (a custom VJP).
  """
  return _dense_conv(x, kernel, padding)


def _tap_conv_fwd(x, kernel, padding):
  return _dense_conv(x, kernel, padding), (x, kernel)


def _tap_conv_bwd(padding, residuals, grad):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: _dense_conv(v, kernel, padding), x)
  (dx,) = input_vjp(grad)
  kh, kw, cin, cout = kernel.shape
  n, out_h, out_w, _ = grad.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  rows = grad.reshape(-1, cout)
  # float32 accumulation for bf16, float64 kept for float64.
  accumulate = jnp.promote_types(jnp.result_type(x, grad), jnp.float32)
  # The rows hold the batch. Sharded explicitly (jax.sharding.AxisType
  # .Explicit), their sum is a reduction across devices that must be told
  # its result: the kernel, replicated. Under Auto sharding XLA decides.
  explicit = any(jax.typeof(x).sharding.spec) or any(
    jax.typeof(grad).sharding.spec
  )
  replicated = jax.sharding.PartitionSpec() if explicit else None
  taps = []
  for i in range(kh):
    for j in range(kw):
      window = jax.lax.slice(xp, (0, i, j, 0), (n, i + out_h, j + out_w, cin))
      taps.append(
        jax.lax.dot_general(
          window.reshape(-1, cin),
          rows,
          (((0,), (0,)), ((), ())),
          preferred_element_type=accumulate,
          out_sharding=replicated,
        )
      )
  dkernel = jnp.stack(taps).reshape(kernel.shape)
  return dx, dkernel.astype(kernel.dtype)


tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


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
