"""Depthwise k x k convolution in three forms, picked by `depthwise_impl`.

* 'grouped': `lax.conv_general_dilated(feature_group_count=C)`, XLA's own
  convolution (and its derived backward).
* 'shifted': a sum of k*k strided shifted slices times per-channel weights.
  XLA:CPU fuses the forward into one loop (5-8x faster than 'grouped' there),
  but the backward XLA derives from the slices (k*k pads of the gradient,
  each a full-size temporary) costs several forwards.
* 'shifted_vjp': the same forward as a `jax.custom_vjp` whose backward is
  written by hand in the same fusable forms: the input gradient is a
  shifted multiply-add of the output gradient with the flipped kernel
  (stride s split into s*s phases, so no multiply by inserted zeros), the
  kernel gradient k*k per-tap reductions, scanned so that each window
  is fused into its reduction. Accumulation is float32 for every dtype.

All take NHWC input, an HWIO `(k, k, 1, C)` kernel and torch's symmetric
padding `(k - 1) // 2`.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

DepthwiseImpl = Literal["auto", "grouped", "shifted", "shifted_vjp"]
IMPLS = ("grouped", "shifted", "shifted_vjp")

# What 'auto' resolves to per backend. CPU: 'shifted_vjp', measured by
# bench/model_bench.py (380 px, batch 8, f32, 2-core AMD EPYC: train step
# 264 ms vs 652 ms for 'shifted' and 1489 ms for 'grouped'; README,
# Benchmarks). Other backends: 'grouped' until a GPU/TPU run measures
# otherwise (bench/gpu_check.sh; none was available).
AUTO = {"cpu": "shifted_vjp"}
AUTO_DEFAULT = "grouped"


def resolve(impl: str, backend: str | None = None) -> str:
  """'auto' -> the measured-fastest form for `backend` (default: JAX's)."""
  if impl == "auto":
    backend = backend or jax.default_backend()
    return AUTO.get(backend, AUTO_DEFAULT)
  if impl not in IMPLS:
    raise ValueError(
      f"depthwise_impl must be 'auto' or one of {IMPLS}, got {impl!r}"
    )
  return impl


def depthwise_conv(
  x: jax.Array, kernel: jax.Array, stride: int, impl: str
) -> jax.Array:
  """Depthwise conv of `x` (N, H, W, C) with `kernel` (k, k, 1, C)."""
  impl = resolve(impl)
  pad = (kernel.shape[0] - 1) // 2
  if impl == "shifted":
    return shifted(x, kernel, stride, pad)
  if impl == "shifted_vjp":
    return shifted_vjp(x, kernel, stride, pad)
  return grouped(x, kernel, stride, pad)


def grouped(x: jax.Array, kernel: jax.Array, stride: int, pad: int):
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=x.shape[-1],
  )


def _out_size(size: int, k: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - k) // stride + 1


def _window(xp: jax.Array, i: int, j: int, rows: int, cols: int, step: int):
  """xp[:, i : i + step*rows : step, j : j + step*cols : step, :]."""
  return jax.lax.slice(
    xp,
    (0, i, j, 0),
    (
      xp.shape[0],
      i + step * (rows - 1) + 1,
      j + step * (cols - 1) + 1,
      xp.shape[3],
    ),
    (1, step, step, 1),
  )


def shifted(
  x: jax.Array, kernel: jax.Array, stride: int, pad: int
) -> jax.Array:
  """Sum of k*k strided shifted slices times weights (autodiff backward)."""
  k = kernel.shape[0]
  out_h = _out_size(x.shape[1], k, stride, pad)
  out_w = _out_size(x.shape[2], k, stride, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      term = _window(xp, i, j, out_h, out_w, stride) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


# ------------------------------------------------------ hand-written VJP


def _forward_f32acc(x, kernel, stride, pad):
  """The shifted forward, accumulated in float32, cast to x's dtype."""
  k = kernel.shape[0]
  out_h = _out_size(x.shape[1], k, stride, pad)
  out_w = _out_size(x.shape[2], k, stride, pad)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  w = kernel.astype(jnp.float32)
  out = None
  for i in range(k):
    for j in range(k):
      win = _window(xp, i, j, out_h, out_w, stride).astype(jnp.float32)
      term = win * w[i, j, 0]
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _input_grad(g, kernel, stride, pad, in_h, in_w):
  """d loss / d x from the output gradient `g` (N, OH, OW, C).

  In padded-input coordinates r = s*u + a (phase a in [0, s)), only taps
  i = a + s*m reach r, from output row u - m: each phase is a stride-1
  shifted multiply-add of `g` with the sub-kernel kernel[a::s, b::s]. The
  s*s phases interleave back (stack + reshape) and the padding is cut off.
  """
  k = kernel.shape[0]
  s = stride
  n, out_h, out_w, c = g.shape
  hp, wp = in_h + 2 * pad, in_w + 2 * pad
  uh, uw = -(-hp // s), -(-wp // s)  # phase rows/cols (ceil)
  mmax = (k - 1) // s
  gp = jnp.pad(g, ((0, 0), (mmax, uh - out_h), (mmax, uw - out_w), (0, 0)))
  w = kernel.astype(jnp.float32)
  phases = []
  for a in range(s):
    row = []
    for b in range(s):
      acc = None
      for mi, i in enumerate(range(a, k, s)):
        for mj, j in enumerate(range(b, k, s)):
          win = jax.lax.slice(
            gp,
            (0, mmax - mi, mmax - mj, 0),
            (n, mmax - mi + uh, mmax - mj + uw, c),
          ).astype(jnp.float32)
          term = win * w[i, j, 0]
          acc = term if acc is None else acc + term
      if acc is None:  # k < s: this phase gets no tap
        acc = jnp.zeros((n, uh, uw, c), jnp.float32)
      row.append(acc)
    phases.append(row)
  if s == 1:
    full = phases[0][0]
  else:
    # (N, uh, s, uw, s, C): full[:, u*s + a, v*s + b] = phases[a][b][:, u, v].
    full = jnp.stack(
      [jnp.stack(row, axis=3) for row in phases], axis=2
    ).reshape(n, uh * s, uw * s, c)
  return full[:, pad : pad + in_h, pad : pad + in_w, :].astype(g.dtype)


def _phases(xp: jax.Array, s: int) -> jax.Array:
  """(s*s, N, ceil(H/s), ceil(W/s), C): phase a*s + b is xp[:, a::s, b::s]."""
  n, hp, wp, c = xp.shape
  if s == 1:
    return xp[None]
  ph, pw = -(-hp // s), -(-wp // s)
  xp = jnp.pad(xp, ((0, 0), (0, ph * s - hp), (0, pw * s - wp), (0, 0)))
  xp = xp.reshape(n, ph, s, pw, s, c).transpose(2, 4, 0, 1, 3, 5)
  return xp.reshape(s * s, n, ph, pw, c)


def _kernel_grad(x, g, k, stride, pad, dtype):
  """d loss / d kernel: per tap, sum over (n, h, w) of window * g.

  The k*k taps run as a `lax.scan` over (phase, row, col) offsets, each a
  `dynamic_slice` of the strided phases of the padded input fused into its
  multiply-reduce. Written as k*k static slices instead, XLA:CPU copies
  every shifted window to memory before reducing it (5-7x slower; the
  kernel gradient was most of the depthwise backward).
  """
  s = stride
  n, out_h, out_w, c = g.shape
  xp = _phases(jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), s)
  gf = g.astype(jnp.float32)
  taps = [(i, j) for i in range(k) for j in range(k)]
  offsets = (
    jnp.array([(i % s) * s + j % s for i, j in taps], jnp.int32),  # phase
    jnp.array([i // s for i, _ in taps], jnp.int32),  # row in the phase
    jnp.array([j // s for _, j in taps], jnp.int32),  # col in the phase
  )

  def tap(carry, offset):
    phase, row, col = offset
    win = jax.lax.dynamic_slice(
      xp, (phase, 0, row, col, 0), (1, n, out_h, out_w, c)
    )[0]
    return carry, jnp.sum(win.astype(jnp.float32) * gf, axis=(0, 1, 2))

  _, dk = jax.lax.scan(tap, None, offsets)
  return dk.reshape(k, k, 1, c).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def shifted_vjp(
  x: jax.Array, kernel: jax.Array, stride: int, pad: int
) -> jax.Array:
  """The shifted form with the hand-written backward described above."""
  return _forward_f32acc(x, kernel, stride, pad)


def _fwd(x, kernel, stride, pad):
  return _forward_f32acc(x, kernel, stride, pad), (x, kernel)


def _bwd(stride, pad, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  dx = _input_grad(g, kernel, stride, pad, x.shape[1], x.shape[2])
  dk = _kernel_grad(x, g, k, stride, pad, kernel.dtype)
  return dx.astype(x.dtype), dk


shifted_vjp.defvjp(_fwd, _bwd)
