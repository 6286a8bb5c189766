"""MobileNetV3-Small in Flax NNX: an exact port of torchvision's model.

The layer table, activations, squeeze-excitation widths, batch-norm eps and
momentum, padding and initialisation follow torchvision's
`mobilenet_v3_small`, so a torchvision state_dict converts to these parameters
by a name map (see `asrid_jax/convert.py`) and gives the same outputs.

Layout is NHWC. Module paths mirror the torchvision state_dict: torch key
`features.4.block.1.0.weight` is `features[4].block[1][0].kernel` here (the
torch `Conv2dNormActivation` Sequential is an `nnx.List` subclass, so its conv
and norm are items 0 and 1), `features.4.block.2.fc1.weight` is
`features[4].block[2].fc1.kernel`, `classifier.3.weight` is
`classifier[3].kernel`. Leaf renames: conv/linear `weight` -> `kernel`, norm
`weight` -> `scale`, `running_mean` -> `mean`, `running_var` -> `var`.

Train/eval: `model.train()` / `model.eval()` switch batch norm between batch
statistics (updating the running averages, as torch does) and running
statistics, and the classifier dropout on/off.

Frozen batch norm (`frozen_bn=True`): every norm layer always normalises with
its running statistics, never updates them, and stores its scale and bias as
`FrozenParam` variables instead of `nnx.Param`. Optimisers and gradients taken
with respect to `nnx.Param` (e.g. `nnx.Optimizer(model, tx, wrt=nnx.Param)`,
`nnx.grad(..., argnums=nnx.DiffState(0, nnx.Param))`) therefore skip them.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from asrid_jax.models.layers import (  # noqa: F401 (re-exported)
  BN_EPS,
  BN_MOMENTUM,
  WEIGHTS,
  BatchNorm2d,
  Conv2d,
  DepthwiseImpl,
  FrozenParam,
  _activation,
  _conv_init,
  _linear_init,
  resolve_depthwise_impl,
)

DROPOUT_RATE = 0.2
LAST_CHANNEL = 1024

# Bottleneck table of torchvision's mobilenet_v3_small (width_mult=1):
# (input, kernel, expanded, out, use_se, activation, stride).
SMALL_SETTING: tuple[tuple[int, int, int, int, bool, str, int], ...] = (
  (16, 3, 16, 16, True, "relu", 2),
  (16, 3, 72, 24, False, "relu", 2),
  (24, 3, 88, 24, False, "relu", 1),
  (24, 5, 96, 40, True, "hardswish", 2),
  (40, 5, 240, 40, True, "hardswish", 1),
  (40, 5, 240, 40, True, "hardswish", 1),
  (40, 5, 120, 48, True, "hardswish", 1),
  (48, 5, 144, 48, True, "hardswish", 1),
  (48, 5, 288, 96, True, "hardswish", 2),
  (96, 5, 576, 96, True, "hardswish", 1),
  (96, 5, 576, 96, True, "hardswish", 1),
)

# Which `features[i]` output each spatial tap is.
TAP_INDICES = {"stride8": 3, "stride16": 8, "last": 12}


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: round to a multiple, lose at most 10%."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


class ConvNormActivation(nnx.List):
  """torchvision's Conv2dNormActivation: items [0] conv, [1] batch norm."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: str | None,
    dtype: Any,
    depthwise_impl: DepthwiseImpl,
    frozen_bn: bool,
    rngs: nnx.Rngs,
  ):
    conv = Conv2d(
      in_features,
      out_features,
      kernel_size,
      stride=stride,
      groups=groups,
      dtype=dtype,
      depthwise_impl=depthwise_impl,
      rngs=rngs,
    )
    norm = BatchNorm2d(out_features, dtype=dtype, frozen=frozen_bn)
    super().__init__([conv, norm])
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    return _activation(self.activation, self[1](self[0](x)))


class SqueezeExcitation(nnx.Module):
  """SE: global mean -> fc1 -> ReLU -> fc2 -> hardsigmoid -> scale input.

  torch's fc1/fc2 are 1x1 convs on a 1x1 map; here they are linears on the
  pooled vector (kernel `(in, out)`), which is the same computation.
  """

  def __init__(
    self, channels: int, squeeze: int, *, dtype: Any, rngs: nnx.Rngs
  ):
    linear = functools.partial(
      nnx.Linear,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=_conv_init,
      bias_init=nnx.initializers.zeros_init(),
      rngs=rngs,
    )
    self.fc1 = linear(channels, squeeze)
    self.fc2 = linear(squeeze, channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    scale = jax.nn.relu(self.fc1(scale))
    scale = jax.nn.hard_sigmoid(self.fc2(scale))
    return x * scale[:, None, None, :].astype(x.dtype)


class InvertedResidual(nnx.Module):
  """One bottleneck: [expand 1x1] -> depthwise -> [SE] -> project 1x1."""

  def __init__(
    self,
    setting: Sequence[Any],
    *,
    dtype: Any,
    depthwise_impl: DepthwiseImpl,
    frozen_bn: bool,
    rngs: nnx.Rngs,
  ):
    in_ch, kernel, expanded, out_ch, use_se, act, stride = setting
    common = dict(
      dtype=dtype,
      depthwise_impl=depthwise_impl,
      frozen_bn=frozen_bn,
      rngs=rngs,
    )
    layers: list[nnx.Module] = []
    if expanded != in_ch:
      layers.append(
        ConvNormActivation(in_ch, expanded, 1, activation=act, **common)
      )
    layers.append(
      ConvNormActivation(
        expanded,
        expanded,
        kernel,
        stride=stride,
        groups=expanded,
        activation=act,
        **common,
      )
    )
    if use_se:
      squeeze = make_divisible(expanded // 4, 8)
      layers.append(
        SqueezeExcitation(expanded, squeeze, dtype=dtype, rngs=rngs)
      )
    layers.append(
      ConvNormActivation(expanded, out_ch, 1, activation=None, **common)
    )
    self.block = nnx.List(layers)
    self.use_res_connect = stride == 1 and in_ch == out_ch

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    for layer in self.block:
      y = layer(y)
    return y + x if self.use_res_connect else y


class Hardswish(nnx.Module):
  """Parameter-free hardswish, a placeholder keeping torch's indices."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.hard_swish(x)


class MobileNetV3Small(nnx.Module):
  """torchvision `mobilenet_v3_small` with feature taps, NHWC.

  Args:
    num_classes: classifier outputs; 0 builds no classifier and returns no
      'logits' (use it when only the feature taps are needed, so no unused
      parameters are trained).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and batch-norm
      statistics stay float32.
    depthwise_impl: 'grouped' (XLA's convolutions throughout), 'shifted'
      (depthwise as a sum of shifted slices), 'shifted_vjp' (the same with
      a hand-written backward) or 'auto' (`depthwise.AUTO`: shifted_vjp on
      CPU, grouped elsewhere; resolved when traced, switchable with
      `model.set_attributes(depthwise_impl=...)`). Except with 'grouped',
      1x1 convolutions run as matmuls (`layers.Conv2d`).
    frozen_bn: batch norm always uses running statistics, never updates
      them, and its scale/bias are `FrozenParam`, not `nnx.Param`.
    rngs: 'params' for initialisation, 'dropout' for the classifier dropout.
  """

  def __init__(
    self,
    *,
    num_classes: int = 1000,
    dtype: Any = jnp.float32,
    depthwise_impl: DepthwiseImpl = "auto",
    frozen_bn: bool = False,
    rngs: nnx.Rngs,
  ):
    dtype = jnp.dtype(dtype)
    common = dict(
      dtype=dtype,
      depthwise_impl=depthwise_impl,
      frozen_bn=frozen_bn,
      rngs=rngs,
    )
    first = SMALL_SETTING[0][0]
    layers: list[nnx.Module] = [
      ConvNormActivation(
        3, first, 3, stride=2, activation="hardswish", **common
      )
    ]
    for setting in SMALL_SETTING:
      layers.append(InvertedResidual(setting, **common))
    last_in = SMALL_SETTING[-1][3]
    self.num_features = 6 * last_in
    layers.append(
      ConvNormActivation(
        last_in, self.num_features, 1, activation="hardswish", **common
      )
    )
    self.features = nnx.List(layers)
    self.num_classes = num_classes
    self.dtype = dtype
    if num_classes:
      linear = functools.partial(
        nnx.Linear,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_linear_init,
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
      )
      self.classifier = nnx.List(
        [
          linear(self.num_features, LAST_CHANNEL),
          Hardswish(),
          nnx.Dropout(DROPOUT_RATE, rngs=rngs),
          linear(LAST_CHANNEL, num_classes),
        ]
      )
    else:
      self.classifier = None

  def __call__(
    self, x: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> dict[str, jax.Array]:
    """Runs the network on normalised NHWC images.

    Args:
      x: (B, H, W, 3) float images, ImageNet-normalised.
      rngs: optional dropout keys for the classifier (train mode only).

    Returns:
      'stride8' (B, H/8, W/8, 24), 'stride16' (B, H/16, W/16, 48) and 'last'
      (B, H/32, W/32, 576) in the compute dtype; 'pooled' (B, 576) and
      'logits' (B, num_classes; absent when num_classes=0) in float32.
      Spatial sizes round up as torch's (k - 1) // 2 padding does.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected (B, H, W, 3) NHWC images, got {x.shape}")
    out: dict[str, jax.Array] = {}
    taps = {index: name for name, index in TAP_INDICES.items()}
    for index, layer in enumerate(self.features):
      x = layer(x)
      if index in taps:
        out[taps[index]] = x
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    out["pooled"] = pooled
    if self.classifier is not None:
      fc1, act, dropout, fc2 = self.classifier
      y = act(fc1(pooled))
      y = dropout(y, rngs=rngs)
      out["logits"] = fc2(y).astype(jnp.float32)
    return out


def load_pretrained(
  backbone: MobileNetV3Small, path: str | pathlib.Path
) -> MobileNetV3Small:
  """Loads weights written by `python -m asrid_jax.convert` into `backbone`.

  All feature weights and batch-norm statistics must match exactly. The
  classifier is loaded when both the backbone and the file have one of the
  same shape; otherwise the backbone's own classifier is kept (and logged).

  Returns:
    The same backbone, updated in place.
  """
  # Imported here: convert.py owns the on-disk format and imports this file.
  from asrid_jax import convert  # pylint: disable=g-import-not-at-top

  saved = convert.read_converted(path)
  state = nnx.state(backbone, WEIGHTS)
  flat = convert.flat_str_dict(nnx.to_pure_dict(state))
  updates, kept = convert.match_params(flat, saved, source=str(path))
  if kept:
    logging.info(
      "load_pretrained(%s): kept %d initialised classifier tensors (%s)",
      path,
      len(kept),
      ", ".join(sorted(kept)),
    )
  pure = nnx.to_pure_dict(state)

  def _replace(node: Any, prefix: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
      return {k: _replace(v, prefix + (str(k),)) for k, v in node.items()}
    key = "/".join(prefix)
    if key in updates:
      return jnp.asarray(updates[key], dtype=node.dtype)
    return node

  nnx.replace_by_pure_dict(state, _replace(pure, ()))
  nnx.update(backbone, state)
  return backbone
