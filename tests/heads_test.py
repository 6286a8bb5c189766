"""Tests for the Mix block, static/baseline heads and the temporal head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asrid_jax.models import heads, temporal

N, M, D, G = 6, 3, 16, 40


pytestmark = pytest.mark.usefixtures("fast_compiles")


# Jitted calls: op-by-op dispatch of an attention layer is slower than one
# small compile on the 2-core CPU machine.
@nnx.jit
def _apply(module, x, key=None):
  return module(x, rngs=None if key is None else nnx.Rngs(dropout=key))


def _tokens(seed=0, n=N, m=M):
  return jax.random.normal(jax.random.key(seed), (n, m, D))


def test_sinusoidal_encoding_values():
  enc = temporal.sinusoidal_encoding(5, 8)
  assert enc.shape == (5, 8) and enc.dtype == np.float32
  np.testing.assert_allclose(enc[0], [0, 1] * 4, atol=1e-7)
  # Channel pair i has frequency 10000^(-2i/d).
  for pos in range(5):
    for i in range(4):
      angle = pos * 10000.0 ** (-2 * i / 8)
      np.testing.assert_allclose(enc[pos, 2 * i], np.sin(angle), atol=1e-6)
      np.testing.assert_allclose(enc[pos, 2 * i + 1], np.cos(angle), atol=1e-6)
  with pytest.raises(ValueError, match="even"):
    temporal.sinusoidal_encoding(3, 7)


def test_mix_prepends_a_global_token_and_skip_is_residual():
  mix = heads.Mix(G, M, D, rngs=nnx.Rngs(0))
  g = jax.random.normal(jax.random.key(1), (N, G))
  parts = _tokens()
  out = mix(g, parts)
  assert out.shape == (N, M + 1, D)
  np.testing.assert_array_equal(np.asarray(out[:, 1:]), np.asarray(parts))
  # With the fused branch silenced, the global token is the skip projection
  # of the backbone feature: the block degrades to a residual path.
  mix.fuse.kernel[...] = jnp.zeros_like(mix.fuse.kernel[...])
  mix.fuse.bias[...] = jnp.zeros_like(mix.fuse.bias[...])
  np.testing.assert_allclose(
    np.asarray(mix(g, parts)[:, 0]), np.asarray(mix.skip_proj(g)), rtol=1e-6
  )
  no_skip = heads.Mix(G, M, D, skip=False, rngs=nnx.Rngs(0))
  assert no_skip.skip_proj is None
  assert no_skip(g, parts).shape == (N, M + 1, D)
  n_with = sum(x.size for x in jax.tree.leaves(nnx.state(mix, nnx.Param)))
  n_without = sum(
    x.size for x in jax.tree.leaves(nnx.state(no_skip, nnx.Param))
  )
  assert n_with - n_without == G * D + D


def test_static_head_shapes_bn_and_dropout_modes():
  head = heads.StaticHead(M, D, num_heads=4, dropout=0.5, rngs=nnx.Rngs(0))
  x = _tokens()
  head.train()
  bn_before = np.asarray(head.bn.mean[...])
  logit_a, feat = head(x, rngs=nnx.Rngs(dropout=1))
  assert logit_a.shape == (N,) and logit_a.dtype == jnp.float32
  assert feat.shape == (N, D)
  bn_after = np.asarray(head.bn.mean[...])
  assert np.abs(bn_after - bn_before).max() > 0  # train updates BN stats
  logit_a2, _ = head(x, rngs=nnx.Rngs(dropout=1))
  logit_b, _ = head(x, rngs=nnx.Rngs(dropout=2))
  np.testing.assert_array_equal(np.asarray(logit_a), np.asarray(logit_a2))
  assert np.abs(np.asarray(logit_a) - np.asarray(logit_b)).max() > 1e-4
  with pytest.raises(ValueError):  # train mode with dropout needs keys
    head(x)
  head.eval()
  frozen = np.asarray(head.bn.mean[...])
  e1, _ = head(x, rngs=nnx.Rngs(dropout=1))
  e2, _ = head(x)
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
  np.testing.assert_array_equal(np.asarray(head.bn.mean[...]), frozen)
  with pytest.raises(ValueError, match="tokens"):
    head(_tokens(m=M + 1))
  with pytest.raises(ValueError, match="divisible"):
    heads.StaticHead(M, D, num_heads=3, rngs=nnx.Rngs(0))


def test_baseline_head():
  head = heads.BaselineHead(G, dropout=0.0, rngs=nnx.Rngs(0))
  pooled = jax.random.normal(jax.random.key(0), (N, G))
  logit, feat = head(pooled)
  assert logit.shape == (N,)
  np.testing.assert_allclose(
    np.asarray(logit),
    np.asarray(pooled @ head.fc.kernel[...] + head.fc.bias[...])[:, 0],
    rtol=1e-5,
  )
  assert feat is pooled


def test_temporal_head_is_order_aware_and_takes_any_length():
  head = temporal.TemporalHead(
    D, num_layers=2, num_heads=4, mlp_dim=32, dropout=0.1, rngs=nnx.Rngs(0)
  )
  head.eval()
  x = jax.random.normal(jax.random.key(3), (2, 5, D))
  out = _apply(head, x)
  assert out.shape == (2,) and out.dtype == jnp.float32
  # Without positional encoding, attention + mean would be permutation
  # invariant; with it, reversing the frames changes the clip logit.
  reversed_out = _apply(head, x[:, ::-1])
  assert np.abs(np.asarray(out) - np.asarray(reversed_out)).max() > 1e-4
  assert _apply(head, x[:, :3]).shape == (2,)
  # Each clip is scored independently of the others in the batch.
  np.testing.assert_allclose(
    np.asarray(_apply(head, x[:1])), np.asarray(out[:1]), rtol=1e-5, atol=1e-6
  )
  wide = temporal.TemporalHead(
    D, width=8, num_layers=1, num_heads=2, mlp_dim=16, rngs=nnx.Rngs(0)
  )
  assert wide.in_proj is not None
  wide.eval()
  assert _apply(wide, x).shape == (2,)
  with pytest.raises(ValueError, match="B, T, F"):
    head(x[0])


def test_temporal_dropout_only_in_train_mode():
  head = temporal.TemporalHead(
    D, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.3, rngs=nnx.Rngs(0)
  )
  x = jax.random.normal(jax.random.key(4), (3, 4, D))
  head.train()
  a = _apply(head, x, jax.random.key(0))
  b = _apply(head, x, jax.random.key(0))
  c = _apply(head, x, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-5
  head.eval()
  np.testing.assert_array_equal(
    np.asarray(_apply(head, x, jax.random.key(0))), np.asarray(_apply(head, x))
  )


def test_every_head_parameter_gets_a_gradient():
  rngs = nnx.Rngs(0)
  mix = heads.Mix(G, M, D, rngs=rngs)
  static = heads.StaticHead(M + 1, D, num_heads=4, dropout=0.1, rngs=rngs)
  dyn = temporal.TemporalHead(
    D, num_layers=1, num_heads=4, mlp_dim=32, dropout=0.1, rngs=rngs
  )
  modules = nnx.List([mix, static, dyn])
  modules.train()
  g = jax.random.normal(jax.random.key(1), (N, G))
  parts = _tokens()
  labels = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])

  def loss_fn(mods):
    mix_, static_, dyn_ = mods
    logits, feats = static_(mix_(g, parts), rngs=nnx.Rngs(dropout=0))
    clip = dyn_(feats.reshape(3, 2, D), rngs=nnx.Rngs(dropout=1))
    return jnp.mean((logits - labels) ** 2) + jnp.mean(clip**2)

  grads = nnx.jit(nnx.grad(loss_fn))(modules)
  for path, leaf in jax.tree.leaves_with_path(nnx.to_pure_dict(grads)):
    value = np.asarray(leaf)
    assert np.all(np.isfinite(value)), path
    assert np.abs(value).max() > 0, path
