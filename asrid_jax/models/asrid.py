"""ASRID: the full model for every paper variant (Table 2).

    model = ASRID(**config.model, rngs=nnx.Rngs(seed))
    out = model(images, rngs=nnx.Rngs(dropout=key))  # or rngs=key, or None

| variant     | attention | Mix | static head | dynamic head |
|-------------|-----------|-----|-------------|--------------|
| baseline    | -         | -   | pooled FC   | -            |
| sta_pic     | yes       | -   | StaNew      | -            |
| sta_new     | yes       | -   | StaNew      | -            |
| sta_new_mix | yes       | yes | StaNew      | -            |
| dyn         | yes       | -   | StaNew      | Transformer  |
| dyn_mix     | yes       | yes | StaNew      | Transformer  |

sta_pic and sta_new are the same network; the paper trains sta_pic on
batches sampled by picture (T = 1) and sta_new by video (clips). Dynamic
variants run the static head on every frame (its frame logits are trained
too, paper eq. 1) and feed its per-frame features, in clip order, to the
temporal Transformer.

Images (B, T, H, W, 3) are uint8 in [0, 255] or float in [0, 1]; they are
scaled and ImageNet-normalised here and folded to (B * T, H, W, 3) for the
backbone, so BatchNorm statistics cover all frames of the batch.

Attention variants without Mix read the backbone only up to its stride-16
tap: its stride-32 stage and last conv (features[9:], 736k of its 927k
parameters) get zero gradients there (the train step finds them and neither
decays them nor counts them in |g|). XLA drops their compute only in eval
mode: in training their BatchNorm layers still update running statistics,
which are outputs of the step, so the stage is computed (its cost is small:
about 1/16 of the stride-8 map's positions). The full backbone is kept so
checkpoints and torchvision weights keep one layout across variants.

Parameter groups (attribute names, for per-group learning rates and tests):
backbone, attention, mix, static_head, dynamic_head (absent ones are None).
Non-trainable state: nnx.BatchStat (BN statistics and the attention's
FeatureCenter), FrozenParam (frozen-BN scale/bias) -- a train step should
differentiate `nnx.Param` only and carry everything else through.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asrid_jax.models import mobilenet_v3
from asrid_jax.models.attention import MultiHeadSpatialAttention
from asrid_jax.models.heads import BaselineHead, Mix, StaticHead
from asrid_jax.models.temporal import TemporalHead

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Channel counts of MobileNetV3-Small's taps.
STRIDE8_CHANNELS = 24
STRIDE16_CHANNELS = 48

PARAM_GROUPS = ("backbone", "attention", "mix", "static_head", "dynamic_head")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class VariantSpec:
  attention: bool
  mix: bool
  dynamic: bool


VARIANTS: dict[str, VariantSpec] = {
  "baseline": VariantSpec(attention=False, mix=False, dynamic=False),
  "sta_pic": VariantSpec(attention=True, mix=False, dynamic=False),
  "sta_new": VariantSpec(attention=True, mix=False, dynamic=False),
  "sta_new_mix": VariantSpec(attention=True, mix=True, dynamic=False),
  "dyn": VariantSpec(attention=True, mix=False, dynamic=True),
  "dyn_mix": VariantSpec(attention=True, mix=True, dynamic=True),
}


def _as_dropout_rngs(rngs: nnx.Rngs | jax.Array | None) -> nnx.Rngs | None:
  """Accepts nnx.Rngs, a typed or raw PRNG key, or None."""
  if rngs is None or isinstance(rngs, nnx.Rngs):
    return rngs
  if isinstance(rngs, jax.Array | np.ndarray):
    return nnx.Rngs(dropout=rngs)
  raise TypeError(f"rngs must be nnx.Rngs, a PRNG key or None, got {rngs!r}")


def normalize_images(images: jax.Array, dtype: Any) -> jax.Array:
  """uint8 [0, 255] or float [0, 1] -> ImageNet-normalised `dtype`."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    if images.dtype != jnp.uint8:
      raise ValueError(f"integer images must be uint8, got {images.dtype}")
    x = images.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(images.dtype, jnp.floating):
    x = images.astype(jnp.float32)
  else:
    raise ValueError(f"images must be uint8 or float, got {images.dtype}")
  return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)


class ASRID(nnx.Module):
  """The ASRID deepfake detector; see the module docstring."""

  def __init__(
    self,
    *,
    variant: str = "dyn_mix",
    num_attention: int = 4,
    attention_dim: int = 128,
    transformer_layers: int = 2,
    transformer_heads: int = 4,
    transformer_mlp_dim: int = 256,
    dropout: float = 0.1,
    dtype: str = "float32",
    depthwise_impl: str = "auto",
    frozen_bn: bool = False,
    aux_loss: bool = False,
    texture_dim: int = 64,
    attention_activation: str = "softplus",
    mix_skip: bool = True,
    rngs: nnx.Rngs,
  ):
    """Builds one variant.

    Args:
      variant: one of VARIANTS.
      num_attention: M, the number of spatial attention maps.
      attention_dim: d, the width of part tokens, of the static head's
        per-frame feature and of the temporal Transformer.
      transformer_layers: temporal encoder layers.
      transformer_heads: heads of the temporal encoder AND of the static
        head's self-attention over part tokens.
      transformer_mlp_dim: MLP width of each temporal encoder layer.
      dropout: dropout rate of the heads (attention weights, FC, encoder).
      dtype: compute dtype, 'float32' or 'bfloat16' (params stay float32).
      depthwise_impl: backbone depthwise conv: 'auto', 'shifted',
        'shifted_vjp', 'grouped' (mobilenet_v3.MobileNetV3Small).
      frozen_bn: backbone BN uses running statistics and is not trained.
      aux_loss: compute the regional-independence loss (outputs['aux']).
      texture_dim: channels of the attention's texture enhancement (0: pool
        the raw 24-channel stride-8 map).
      attention_activation: 'softplus' or 'relu' for the attention maps.
      mix_skip: the Mix block's residual skip from the backbone feature.
      rngs: parameter initialisation keys.
    """
    if variant not in VARIANTS:
      raise ValueError(
        f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}"
      )
    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    spec = VARIANTS[variant]
    compute_dtype = _DTYPES[dtype]
    self.variant = variant
    self.dtype = compute_dtype
    self.dropout_rate = dropout
    # model.train() / model.eval() set this like Dropout's flag; used to give
    # a clear error when training without dropout keys.
    self.deterministic = False
    self.backbone = mobilenet_v3.MobileNetV3Small(
      num_classes=0,
      dtype=compute_dtype,
      depthwise_impl=depthwise_impl,
      frozen_bn=frozen_bn,
      rngs=rngs,
    )
    global_dim = self.backbone.num_features
    self.attention = self.mix = self.dynamic_head = nnx.data(None)
    if not spec.attention:
      self.static_head = BaselineHead(
        global_dim, dropout=dropout, dtype=compute_dtype, rngs=rngs
      )
    else:
      self.attention = MultiHeadSpatialAttention(
        STRIDE8_CHANNELS,
        STRIDE16_CHANNELS,
        num_maps=num_attention,
        out_dim=attention_dim,
        texture_dim=texture_dim,
        activation=attention_activation,
        aux_loss=aux_loss,
        dtype=compute_dtype,
        rngs=rngs,
      )
      num_tokens = num_attention
      if spec.mix:
        self.mix = Mix(
          global_dim,
          num_attention,
          attention_dim,
          skip=mix_skip,
          dtype=compute_dtype,
          rngs=rngs,
        )
        num_tokens += 1
      self.static_head = StaticHead(
        num_tokens,
        attention_dim,
        num_heads=transformer_heads,
        dropout=dropout,
        dtype=compute_dtype,
        rngs=rngs,
      )
    if spec.dynamic:
      self.dynamic_head = TemporalHead(
        self.static_head.feature_dim,
        width=attention_dim,
        num_layers=transformer_layers,
        num_heads=transformer_heads,
        mlp_dim=transformer_mlp_dim,
        dropout=dropout,
        dtype=compute_dtype,
        rngs=rngs,
      )

  def __call__(
    self,
    images: jax.Array,
    rngs: nnx.Rngs | jax.Array | None = None,
    frame_mask: jax.Array | None = None,
  ) -> dict[str, Any]:
    """Scores a batch of clips.

    Args:
      images: (B, T, H, W, 3) uint8 [0, 255] or float [0, 1].
      rngs: dropout keys (nnx.Rngs, whose 'dropout' stream is used, or a
        PRNG key); needed in train mode when dropout > 0, ignored in eval.
      frame_mask: (B, T) bool, True on real frames, False on the padding of
        a clip shorter than T (batch 'frame_order' >= 0); the temporal head
        ignores padded frames. None: every frame is real.

    Returns:
      {'frame_logits': (B, T) float32, 'clip_logit': (B,) float32 (dynamic
      variants), 'attention': (B, T, h, w, M) float32 maps on the stride-8
      grid (not for baseline), 'aux': {name: float32 scalar} (empty unless
      aux_loss)}.
    """
    if images.ndim != 5 or images.shape[-1] != 3:
      raise ValueError(
        f"images must be (B, T, H, W, 3), got shape {images.shape}"
      )
    rngs = _as_dropout_rngs(rngs)
    if rngs is None and not self.deterministic and self.dropout_rate > 0:
      raise ValueError(
        "ASRID is in train mode with dropout > 0 but got no rngs: pass "
        "rngs=nnx.Rngs(dropout=key) (or a key), or call model.eval()"
      )
    b, t = images.shape[:2]
    x = normalize_images(
      images.reshape((b * t,) + images.shape[2:]), self.dtype
    )
    feats = self.backbone(x)
    out: dict[str, Any] = {"aux": {}}
    if self.attention is None:
      frame_logits, frame_feats = self.static_head(feats["pooled"], rngs=rngs)
    else:
      att = self.attention(feats["stride8"], feats["stride16"])
      tokens = att["parts"]
      if self.mix is not None:
        tokens = self.mix(feats["pooled"], tokens)
      frame_logits, frame_feats = self.static_head(tokens, rngs=rngs)
      maps = att["maps"]
      out["attention"] = maps.reshape((b, t) + maps.shape[1:])
      out["aux"] = dict(att["aux"])
    out["frame_logits"] = frame_logits.reshape(b, t)
    if self.dynamic_head is not None:
      out["clip_logit"] = self.dynamic_head(
        frame_feats.reshape(b, t, -1), mask=frame_mask, rngs=rngs
      )
    return out


def param_groups(model: ASRID) -> dict[str, nnx.Module]:
  """The model's trainable sub-modules by group name (present ones only)."""
  groups = {name: getattr(model, name) for name in PARAM_GROUPS}
  return {k: v for k, v in groups.items() if v is not None}


def count_params(model: ASRID) -> dict[str, int]:
  """Trainable (nnx.Param) parameter counts per group and in total."""
  counts = {}
  for name, module in param_groups(model).items():
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    counts[name] = int(sum(np.prod(leaf.shape) for leaf in leaves))
  counts["total"] = sum(counts.values())
  return counts


# Tiny heads for tests (the backbone has one fixed size).
ASRIDTiny = functools.partial(
  ASRID,
  num_attention=2,
  attention_dim=16,
  transformer_layers=1,
  transformer_heads=2,
  transformer_mlp_dim=32,
  texture_dim=8,
)
