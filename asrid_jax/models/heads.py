"""Per-frame heads of ASRID: the Mix block, the static head and the baseline.

Mix (paper §4.2, "Mix"): the global backbone feature (pooled last map, 576
channels: the low-level path) and the attention part tokens (the high-level
path) are concatenated, layer-normalised and projected to one global token of
width d; a skip connection adds a linear projection of the backbone feature,
so the block is residual-style: with the fused branch at zero it still passes
the backbone's global evidence on. The global token is PREPENDED to the part
tokens, so the static head's self-attention sees M + 1 tokens when mixing (the
parts can attend to the global context and vice versa) and M without it.

Static head (StaNew): one pre-norm self-attention layer (with residual) over
the tokens, flatten, BatchNorm, FC-GELU-dropout-FC -> one logit per frame. The
hidden FC activation (width d) is the per-frame vector the dynamic head uses.

Baseline head: pooled backbone feature -> dropout -> FC -> one logit.

Dropout layers hold no keys: callers pass `rngs` (nnx.Rngs) to __call__, and
model.eval() makes them the identity.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def self_attention(
  dim: int, num_heads: int, dropout: float, *, dtype: Any, rngs: nnx.Rngs
) -> nnx.MultiHeadAttention:
  """Self-attention over tokens of width dim, shared by the static and
  dynamic heads. Dropout keys come from the caller's `rngs` at call time
  (`keep_rngs=False`), so the module holds no RNG state of its own."""
  return nnx.MultiHeadAttention(
    num_heads,
    dim,
    dropout_rate=dropout,
    deterministic=False,
    dtype=dtype,
    decode=False,
    keep_rngs=False,
    rngs=rngs,
  )


class Mix(nnx.Module):
  """Fuses the global feature with the part tokens into M + 1 tokens."""

  def __init__(
    self,
    global_dim: int,
    num_parts: int,
    dim: int,
    *,
    skip: bool = True,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the block.

    Args:
      global_dim: width of the pooled backbone feature (576).
      num_parts: M, the number of part tokens.
      dim: d, the token width.
      skip: add the projected backbone feature to the fused token (the
        residual connection); False keeps the fused branch alone.
      dtype: compute dtype (params float32).
      rngs: parameter initialisation keys.
    """
    fused_dim = global_dim + num_parts * dim
    self.skip = skip
    self.norm = nnx.LayerNorm(fused_dim, dtype=dtype, rngs=rngs)
    self.fuse = nnx.Linear(fused_dim, dim, dtype=dtype, rngs=rngs)
    if skip:
      self.skip_proj = nnx.Linear(global_dim, dim, dtype=dtype, rngs=rngs)
    else:
      self.skip_proj = nnx.data(None)

  def __call__(self, global_feat: jax.Array, parts: jax.Array) -> jax.Array:
    """(N, G) global feature, (N, M, d) parts -> (N, M + 1, d) tokens."""
    n = parts.shape[0]
    x = jnp.concatenate(
      [global_feat.astype(parts.dtype), parts.reshape(n, -1)], axis=-1
    )
    token = jax.nn.gelu(self.fuse(self.norm(x)))
    if self.skip_proj is not None:
      token = token + self.skip_proj(global_feat.astype(parts.dtype))
    return jnp.concatenate([token[:, None, :].astype(parts.dtype), parts], 1)


class StaticHead(nnx.Module):
  """StaNew: self-attention over tokens, BN, two FC layers -> frame logit."""

  def __init__(
    self,
    num_tokens: int,
    dim: int,
    *,
    num_heads: int = 4,
    hidden_dim: int | None = None,
    dropout: float = 0.1,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the head.

    Args:
      num_tokens: tokens per frame (M, or M + 1 with Mix).
      dim: token width d; must be divisible by num_heads.
      num_heads: self-attention heads.
      hidden_dim: width of the first FC layer and of the per-frame feature
        (default d).
      dropout: rate of the dropout before the last FC and on the attention
        weights.
      dtype: compute dtype (params float32).
      rngs: parameter initialisation keys.
    """
    if dim % num_heads:
      raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
    hidden_dim = hidden_dim or dim
    self.num_tokens = num_tokens
    self.feature_dim = hidden_dim
    self.norm = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.attn = self_attention(dim, num_heads, dropout, dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(
      num_tokens * dim, momentum=0.9, dtype=dtype, rngs=rngs
    )
    self.fc1 = nnx.Linear(num_tokens * dim, hidden_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.fc2 = nnx.Linear(hidden_dim, 1, dtype=dtype, rngs=rngs)

  def __call__(
    self, tokens: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(N, K, d) tokens -> (logits (N,) float32, features (N, hidden))."""
    if tokens.shape[1] != self.num_tokens:
      raise ValueError(
        f"expected {self.num_tokens} tokens, got shape {tokens.shape}"
      )
    x = tokens + self.attn(self.norm(tokens), rngs=rngs)
    x = self.bn(x.reshape(x.shape[0], -1))
    feature = jax.nn.gelu(self.fc1(x))
    logit = self.fc2(self.dropout(feature, rngs=rngs))
    return logit[:, 0].astype(jnp.float32), feature


class BaselineHead(nnx.Module):
  """Pooled backbone feature -> dropout -> FC -> one logit per frame."""

  def __init__(
    self,
    in_dim: int,
    *,
    dropout: float = 0.1,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.feature_dim = in_dim
    self.dropout = nnx.Dropout(dropout)
    self.fc = nnx.Linear(in_dim, 1, dtype=dtype, rngs=rngs)

  def __call__(
    self, pooled: jax.Array, *, rngs: nnx.Rngs | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """(N, C) pooled feature -> (logits (N,) float32, the feature itself)."""
    logit = self.fc(self.dropout(pooled, rngs=rngs))
    return logit[:, 0].astype(jnp.float32), pooled
