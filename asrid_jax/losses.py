"""ASRID training losses: stable BCE, the static/dynamic mix and the aux term.

Paper (ASRID, eq. 1): L = w * BCE(static) + (1 - w) * BCE(dynamic), w = 0.8.
The static term scores every frame of a clip against the clip's video label;
the dynamic term scores the clip logit of the temporal head. Variants without
a temporal head (baseline, sta_*) train on the static term alone, at full
weight. An optional auxiliary term (the regional-independence loss of the
attention module, Zhao et al. 2021) is added on top with its own weight.

Everything here is pure jnp and computes in float32 whatever the model's
compute dtype, because log-losses in bfloat16 lose most of their precision.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy on logits, stable for any |logit|.

  Uses max(x, 0) - x * y + log1p(exp(-|x|)), which never exponentiates a
  positive number, so logits of +-1e4 give finite losses and gradients.

  Args:
    logits: any shape, any float dtype.
    labels: same shape (or broadcastable), 1 = FAKE, 0 = REAL; may be soft.

  Returns:
    float32 losses, the broadcast shape of the inputs.
  """
  x = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(labels, jnp.float32)
  return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean over the leading (clip) axis, ignoring rows where mask is False."""
  if mask is None:
    return jnp.mean(values)
  weights = jnp.asarray(mask, jnp.float32).reshape(values.shape)
  # max(.., 1) keeps an all-padding batch at 0 instead of 0/0 = NaN.
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def asrid_loss(
  outputs: Mapping[str, Any],
  labels: jax.Array,
  *,
  static_weight: float = 0.8,
  aux_weight: float = 0.0,
  mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The ASRID objective for one batch of clips.

  Args:
    outputs: the model's output dict: 'frame_logits' (B, T), optionally
      'clip_logit' (B,) (dynamic variants) and 'aux' {name: scalar}.
    labels: (B,) int or float video labels, 1 = FAKE; every frame of a clip
      carries its video's label.
    static_weight: w in w * static + (1 - w) * dynamic; ignored (the static
      term gets weight 1) when outputs has no 'clip_logit'.
    aux_weight: weight of the sum of outputs['aux'] terms; 0 leaves them out
      of the total (they are still reported).
    mask: optional (B,) bool, False on padding rows, which then count neither
      in the numerator nor in the denominator of the means. The aux terms are
      batch statistics computed inside the model and are not masked.

  Returns:
    (total, terms): total a float32 scalar; terms a dict of float32 scalars
    with 'static', 'dynamic' (dynamic variants only), 'aux' (when the model
    returned aux terms) and 'total'.
  """
  if not 0.0 <= static_weight <= 1.0:
    raise ValueError(f"static_weight must be in [0, 1], got {static_weight}")
  frame_logits = outputs["frame_logits"]
  if frame_logits.ndim != 2:
    raise ValueError(
      f"outputs['frame_logits'] must be (B, T), got {frame_logits.shape}"
    )
  labels = jnp.asarray(labels, jnp.float32)
  if labels.shape != frame_logits.shape[:1]:
    raise ValueError(
      f"labels must be (B,) = {frame_logits.shape[:1]}, got {labels.shape}"
    )
  terms: dict[str, jax.Array] = {}
  # Mean over the T frames first, then over clips: every clip weighs the
  # same whatever T is, and the mask applies per clip.
  per_clip = jnp.mean(bce_with_logits(frame_logits, labels[:, None]), axis=1)
  terms["static"] = _masked_mean(per_clip, mask)
  if "clip_logit" in outputs:
    per_clip_dyn = bce_with_logits(outputs["clip_logit"], labels)
    terms["dynamic"] = _masked_mean(per_clip_dyn, mask)
    total = (
      static_weight * terms["static"] + (1.0 - static_weight) * terms["dynamic"]
    )
  else:
    total = terms["static"]
  aux = outputs.get("aux") or {}
  if aux:
    terms["aux"] = sum(jnp.asarray(v, jnp.float32) for v in aux.values())
    if aux_weight:
      total = total + aux_weight * terms["aux"]
  terms["total"] = total
  return total, terms
