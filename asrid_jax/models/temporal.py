"""Dynamic (temporal) head of ASRID: a Transformer encoder over a clip.

Paper §4.2 "Dyn": the per-frame vectors of T consecutive frames of one face
track get a sinusoidal positional encoding (Vaswani et al. 2017), pass a
Transformer encoder, are averaged over time and mapped by one FC layer to a
single clip logit. Inconsistencies between frames (flicker of a blended
region, identity drift) are what this head can see and a per-frame head
cannot.

Clips shorter than T (a face track with fewer than T frames) arrive padded;
`mask` (B, T), True on real frames, keeps the padding out of the
self-attention keys and out of the time mean, so a short clip is scored on
its real frames only. A row without any real frame (evaluation padding rows)
is treated as all real to keep the arithmetic finite; its output is dropped.

Encoder layers are pre-norm (LayerNorm before attention and MLP), which
trains stably without warm-up at the small widths used here. Dropout layers
hold no keys: callers pass `rngs` (nnx.Rngs) to __call__; model.eval() makes
them the identity.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asrid_jax.models import heads


def sinusoidal_encoding(length: int, dim: int) -> np.ndarray:
  """(length, dim) float32 sin/cos positional encoding of Vaswani et al.

  Even channels 2i hold sin(pos / 10000^(2i/dim)), odd channels 2i+1 the
  cosine of the same angle; computed in numpy at trace time (a constant).
  """
  if dim % 2:
    raise ValueError(f"positional encoding needs an even width, got {dim}")
  pos = np.arange(length, dtype=np.float64)[:, None]
  freq = np.power(10000.0, -np.arange(0, dim, 2, dtype=np.float64) / dim)
  enc = np.zeros((length, dim), np.float64)
  enc[:, 0::2] = np.sin(pos * freq)
  enc[:, 1::2] = np.cos(pos * freq)
  return enc.astype(np.float32)


class EncoderLayer(nnx.Module):
  """Pre-norm Transformer encoder layer: x + MHA(LN x), x + MLP(LN x)."""

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    mlp_dim: int,
    dropout: float,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if dim % num_heads:
      raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
    self.norm1 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.attn = heads.self_attention(
      dim, num_heads, dropout, dtype=dtype, rngs=rngs
    )
    self.norm2 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(
    self,
    x: jax.Array,
    *,
    mask: jax.Array | None = None,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """x (B, T, D); mask (B, 1, T, T) attention mask or None."""
    h = self.attn(self.norm1(x), mask=mask, rngs=rngs)
    x = x + self.dropout(h, rngs=rngs)
    h = jax.nn.gelu(self.mlp_in(self.norm2(x)))
    h = self.mlp_out(self.dropout(h, rngs=rngs))
    return x + self.dropout(h, rngs=rngs)


class TemporalHead(nnx.Module):
  """(B, T, F) per-frame vectors -> (B,) clip logits."""

  def __init__(
    self,
    in_dim: int,
    *,
    width: int | None = None,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_dim: int = 256,
    dropout: float = 0.1,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the head.

    Args:
      in_dim: width F of the per-frame vectors.
      width: Transformer width (default in_dim); a linear layer maps F to it
        when they differ.
      num_layers: encoder layers (0 leaves positional encoding + mean + FC).
      num_heads: attention heads per layer.
      mlp_dim: hidden width of each layer's MLP.
      dropout: dropout rate (inputs, attention weights, residual branches).
      dtype: compute dtype (params float32).
      rngs: parameter initialisation keys.
    """
    width = width or in_dim
    self.width = width
    self.dtype = dtype
    if width != in_dim:
      self.in_proj = nnx.Linear(in_dim, width, dtype=dtype, rngs=rngs)
    else:
      self.in_proj = nnx.data(None)
    self.input_dropout = nnx.Dropout(dropout)
    self.layers = nnx.List(
      [
        EncoderLayer(
          width,
          num_heads=num_heads,
          mlp_dim=mlp_dim,
          dropout=dropout,
          dtype=dtype,
          rngs=rngs,
        )
        for _ in range(num_layers)
      ]
    )
    self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
    self.fc = nnx.Linear(width, 1, dtype=dtype, rngs=rngs)

  def __call__(
    self,
    x: jax.Array,
    *,
    mask: jax.Array | None = None,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """x (B, T, F) frame vectors, mask (B, T) bool (True = real) -> (B,)."""
    if x.ndim != 3:
      raise ValueError(f"expected (B, T, F) frame vectors, got {x.shape}")
    x = x.astype(self.dtype)
    if self.in_proj is not None:
      x = self.in_proj(x)
    pe = sinusoidal_encoding(x.shape[1], self.width)
    x = self.input_dropout(x + pe.astype(x.dtype), rngs=rngs)
    attn_mask = None
    if mask is not None:
      if mask.shape != x.shape[:2]:
        raise ValueError(f"mask {mask.shape} must be (B, T) = {x.shape[:2]}")
      mask = mask.astype(bool)
      mask = mask | ~jnp.any(mask, axis=1, keepdims=True)
      attn_mask = nnx.make_attention_mask(mask, mask)
    for layer in self.layers:
      x = layer(x, mask=attn_mask, rngs=rngs)
    x = self.norm(x)
    if mask is None:
      x = jnp.mean(x, axis=1)
    else:
      w = mask.astype(x.dtype)[..., None]
      x = jnp.sum(x * w, axis=1) / jnp.sum(w, axis=1)
    return self.fc(x)[:, 0].astype(jnp.float32)
