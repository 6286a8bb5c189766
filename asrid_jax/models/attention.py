"""Multi-head spatial attention with bilinear attention pooling.

After "Multi-attentional Deepfake Detection" (Zhao et al., CVPR 2021), as the
ASRID paper (§4.2) adapts it to MobileNetV3-Small:

* M attention maps come from the stride-16 (semantic) feature map through
  conv3x3-BN-ReLU-conv1x1 and a positive activation.
* The maps are resized bilinearly to the stride-8 (texture) grid; the texture
  features pass a light texture-enhancement block (local high-pass residual,
  conv3x3-BN-ReLU), as Zhao et al. enhance shallow features before pooling.
* Bilinear attention pooling: part m is the attention-weighted mean of the
  texture features, sum_hw A_m(h, w) F(h, w) / (h * w), then signed sqrt
  (optional) and L2 normalisation per part, then one shared linear projection
  to width d. The output is M part tokens (B, M, d).
* Optional regional-independence loss (Zhao et al. eq. 5): each part vector is
  pulled towards a running centre of its part and the centres of different
  parts are pushed apart. The centres are non-trainable state (FeatureCenter,
  a BatchStat subclass so every `nnx.BatchStat` filter carries them) updated
  by a moving average in train mode only, like BatchNorm statistics.

Positive activation: softplus by default. A ReLU map is exactly zero over
half its input range, and a map that is zero everywhere (it happens at
initialisation for some images) passes no gradient back to its conv, so that
part never learns; softplus is strictly positive with a non-zero gradient
everywhere. `activation='relu'` gives Zhao et al.'s choice.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asrid_jax.models import layers

# Squared distances below are between L2-normalised vectors, so they lie in
# [0, 4]; orthogonal unit vectors are at squared distance 2.
DEFAULT_INTRA_MARGIN = 0.05
DEFAULT_INTER_MARGIN = 1.0
_SQRT_EPS = 1e-6  # bounds d sqrt(|x| + eps) / dx by 1 / (2 * sqrt(eps)) = 500
_NORM_EPS = 1e-12


class FeatureCenter(nnx.BatchStat):
  """Running per-part feature centres of the regional-independence loss.

  Subclasses BatchStat: not a Param (no gradient, no optimizer state), and any
  training code that carries `nnx.BatchStat` state through its step carries
  these too.
  """


def _positive(x: jax.Array, activation: str) -> jax.Array:
  if activation == "softplus":
    return jax.nn.softplus(x)
  if activation == "relu":
    return jax.nn.relu(x)
  raise ValueError(f"activation must be 'softplus' or 'relu', got {activation}")


def bilinear_attention_pool(
  maps: jax.Array, features: jax.Array, *, signed_sqrt: bool = True
) -> jax.Array:
  """Pools features into one L2-normalised vector per attention map.

  Args:
    maps: (N, h, w, M) non-negative attention maps.
    features: (N, h, w, C) features on the same grid.
    signed_sqrt: apply sign(x) * sqrt(|x| + eps) before normalising, which
      damps the few large activations that dominate a bilinear pooling.

  Returns:
    (N, M, C) float32, each (n, m) row of unit L2 norm.
  """
  if maps.shape[:3] != features.shape[:3]:
    raise ValueError(
      f"maps {maps.shape} and features {features.shape} must share (N, h, w)"
    )
  maps = maps.astype(jnp.float32)
  features = features.astype(jnp.float32)
  area = maps.shape[1] * maps.shape[2]
  parts = jnp.einsum("nhwm,nhwc->nmc", maps, features) / area
  if signed_sqrt:
    parts = jnp.sign(parts) * jnp.sqrt(jnp.abs(parts) + _SQRT_EPS)
  norm = jnp.sqrt(jnp.sum(parts * parts, axis=-1, keepdims=True) + _NORM_EPS)
  return parts / norm


def regional_independence_loss(
  parts: jax.Array,
  centers: jax.Array,
  *,
  momentum: float,
  intra_margin: float = DEFAULT_INTRA_MARGIN,
  inter_margin: float = DEFAULT_INTER_MARGIN,
) -> tuple[jax.Array, jax.Array]:
  """Zhao et al.'s regional-independence loss and the updated centres.

  Intra term: each part vector is pulled (hinge at intra_margin) towards its
  part's centre, (1 - momentum) * old + momentum * batch mean, the gradient
  flowing through the batch mean only (as in Zhao et al.'s code).
  Inter term: the batch means of different parts are pushed apart (hinge at
  inter_margin). Zhao et al. apply it to the centres themselves, whose
  gradient is scaled by `momentum` and vanishes when centres coincide, which
  an untrained network's near-identical parts hit at once (measured: the
  parts stayed collapsed); on the batch means the push has full strength.

  Args:
    parts: (N, M, C) L2-normalised part vectors.
    centers: (M, C) running centres (treated as constants).
    momentum: weight of the batch mean in the new centres, in (0, 1].
    intra_margin: squared distance to its centre a part may have for free.
    inter_margin: squared distance below which two centres are penalised.

  Returns:
    (loss, new_centers): a float32 scalar = mean intra hinge + mean inter
    hinge over part pairs; new_centers (M, C) without gradient.
    The module docstring's "centres pushed apart" is this inter term.
  """
  parts = parts.astype(jnp.float32)
  old = jax.lax.stop_gradient(centers.astype(jnp.float32))
  batch_mean = jnp.mean(parts, axis=0)  # (M, C)
  new = (1.0 - momentum) * old + momentum * batch_mean
  intra_dist = jnp.sum(jnp.square(parts - new[None]), axis=-1)  # (N, M)
  loss = jnp.mean(jax.nn.relu(intra_dist - intra_margin))
  num_parts = parts.shape[1]
  if num_parts > 1:
    diff = batch_mean[:, None, :] - batch_mean[None, :, :]
    pair_dist = jnp.sum(jnp.square(diff), axis=-1)  # (M, M)
    rows, cols = jnp.triu_indices(num_parts, k=1)
    loss = loss + jnp.mean(jax.nn.relu(inter_margin - pair_dist[rows, cols]))
  return loss, jax.lax.stop_gradient(new)


class TextureEnhancement(nnx.Module):
  """Local high-pass residual then conv3x3-BN-ReLU (Zhao et al.'s idea).

  Subtracting a 3x3 local mean keeps the fine texture (blending seams,
  up-sampling artefacts) that deepfake detection relies on and removes the
  smooth content the stride-16 path already sees.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    *,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.conv = nnx.Conv(
      2 * in_channels,
      out_channels,
      (3, 3),
      padding=1,
      use_bias=False,
      dtype=dtype,
      conv_general_dilated=layers.conv_general_dilated,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(out_channels, momentum=0.9, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    local_mean = nnx.avg_pool(
      x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False
    )
    x = jnp.concatenate([x, x - local_mean], axis=-1)
    return jax.nn.relu(self.bn(self.conv(x)))


class MultiHeadSpatialAttention(nnx.Module):
  """M spatial attention maps and the M part tokens they pool.

  Call with the backbone's stride-8 and stride-16 maps of the same frames;
  returns {'parts': (N, M, d), 'maps': (N, h8, w8, M) float32 non-negative,
  'aux': {'regional_independence': scalar} or {}}.
  """

  def __init__(
    self,
    texture_channels: int,
    semantic_channels: int,
    *,
    num_maps: int = 4,
    out_dim: int = 128,
    texture_dim: int = 64,
    hidden_channels: int | None = None,
    activation: str = "softplus",
    signed_sqrt: bool = True,
    aux_loss: bool = False,
    center_momentum: float = 0.05,
    intra_margin: float = DEFAULT_INTRA_MARGIN,
    inter_margin: float = DEFAULT_INTER_MARGIN,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the attention module.

    Args:
      texture_channels: channels of the stride-8 map (24 in MobileNetV3-S).
      semantic_channels: channels of the stride-16 map (48).
      num_maps: M, the number of attention maps / part tokens.
      out_dim: d, the width of each part token.
      texture_dim: channels after texture enhancement; 0 pools the raw
        stride-8 features.
      hidden_channels: width of the map generator's conv3x3 (default: the
        stride-16 channel count).
      activation: 'softplus' or 'relu', the positive map activation.
      signed_sqrt: signed square root before L2 normalisation.
      aux_loss: compute the regional-independence loss and keep centres.
      center_momentum: centre moving-average weight of each train batch.
      intra_margin: see regional_independence_loss.
      inter_margin: see regional_independence_loss.
      dtype: compute dtype of the convs and projection (params float32).
      rngs: parameter initialisation keys.
    """
    if num_maps < 1:
      raise ValueError(f"num_maps must be >= 1, got {num_maps}")
    if activation not in ("softplus", "relu"):
      raise ValueError(
        f"activation must be 'softplus' or 'relu', got {activation!r}"
      )
    hidden = hidden_channels or semantic_channels
    self.num_maps = num_maps
    self.activation = activation
    self.signed_sqrt = signed_sqrt
    self.aux_loss = aux_loss
    self.center_momentum = center_momentum
    self.intra_margin = intra_margin
    self.inter_margin = inter_margin
    self.dtype = dtype
    # Named like BatchNorm's flag so model.train() / model.eval() switch the
    # centre updates together with the BN statistics.
    self.use_running_average = False
    self.map_conv = nnx.Conv(
      semantic_channels,
      hidden,
      (3, 3),
      padding=1,
      use_bias=False,
      dtype=dtype,
      conv_general_dilated=layers.conv_general_dilated,
      rngs=rngs,
    )
    self.map_bn = nnx.BatchNorm(hidden, momentum=0.9, dtype=dtype, rngs=rngs)
    self.map_out = nnx.Conv(hidden, num_maps, (1, 1), dtype=dtype, rngs=rngs)
    if texture_dim:
      self.texture = TextureEnhancement(
        texture_channels, texture_dim, dtype=dtype, rngs=rngs
      )
      pooled_channels = texture_dim
    else:
      self.texture = nnx.data(None)
      pooled_channels = texture_channels
    self.proj = nnx.Linear(pooled_channels, out_dim, dtype=dtype, rngs=rngs)
    if aux_loss:
      # Random unit vectors, not zeros: identical initial centres make
      # "all parts equal" a stationary point of the loss (the inter-centre
      # hinge has zero gradient when centres coincide), and the parts of an
      # untrained network are nearly equal, so they would stay collapsed.
      init = jax.random.normal(
        rngs.params(), (num_maps, pooled_channels), jnp.float32
      )
      self.centers = FeatureCenter(
        init / jnp.linalg.norm(init, axis=-1, keepdims=True)
      )
    else:
      self.centers = nnx.data(None)

  def __call__(self, texture: jax.Array, semantic: jax.Array) -> dict[str, Any]:
    """Attention maps and part tokens.

    Args:
      texture: (N, h8, w8, Ct) stride-8 features.
      semantic: (N, h16, w16, Cs) stride-16 features of the same frames.

    Returns:
      dict with 'parts' (N, M, d) in the compute dtype, 'maps'
      (N, h8, w8, M) float32 >= 0 and 'aux' (a dict of float32 scalars).
    """
    if texture.ndim != 4 or semantic.ndim != 4:
      raise ValueError(
        f"expected NHWC maps, got {texture.shape} and {semantic.shape}"
      )
    n, h, w, _ = texture.shape
    x = jax.nn.relu(self.map_bn(self.map_conv(semantic)))
    logits = self.map_out(x).astype(jnp.float32)
    maps = _positive(logits, self.activation)
    # Bilinear upsampling is a convex combination, so the maps stay >= 0.
    maps = jax.image.resize(maps, (n, h, w, self.num_maps), "bilinear")
    if self.texture is not None:
      texture = self.texture(texture)
    parts = bilinear_attention_pool(
      maps, texture, signed_sqrt=self.signed_sqrt
    )  # (N, M, C) float32, unit rows
    aux = {}
    if self.aux_loss:
      loss, new_centers = regional_independence_loss(
        parts,
        self.centers[...],
        momentum=self.center_momentum,
        intra_margin=self.intra_margin,
        inter_margin=self.inter_margin,
      )
      aux["regional_independence"] = loss
      if not self.use_running_average:
        self.centers[...] = new_centers
    tokens = self.proj(parts.astype(self.dtype))
    return {"parts": tokens, "maps": maps, "aux": aux}
