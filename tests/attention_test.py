"""Tests for asrid_jax.models.attention on random feature maps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asrid_jax.models import attention

N, H8, W8, CT, CS = 6, 8, 8, 24, 48


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _features(seed=0, n=N):
  k1, k2 = jax.random.split(jax.random.key(seed))
  texture = jax.random.normal(k1, (n, H8, W8, CT))
  semantic = jax.random.normal(k2, (n, H8 // 2, W8 // 2, CS))
  return texture, semantic


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_shapes_and_non_negative_maps(activation):
  module = attention.MultiHeadSpatialAttention(
    CT, CS, num_maps=3, out_dim=16, activation=activation, rngs=nnx.Rngs(0)
  )
  out = module(*_features())
  assert out["parts"].shape == (N, 3, 16)
  assert out["maps"].shape == (N, H8, W8, 3)
  assert out["maps"].dtype == jnp.float32
  maps = np.asarray(out["maps"])
  assert maps.min() >= 0.0
  assert maps.max() > 0.0
  assert out["aux"] == {}
  assert np.all(np.isfinite(np.asarray(out["parts"])))


def test_bilinear_pool_one_hot_and_uniform_maps():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  maps = np.zeros((2, 4, 4, 2), np.float32)
  maps[:, 1, 2, 0] = 3.0  # map 0 looks at one pixel only
  maps[..., 1] = 1.0  # map 1 looks everywhere equally
  parts = np.asarray(
    attention.bilinear_attention_pool(maps, feats, signed_sqrt=False)
  )
  np.testing.assert_allclose(np.linalg.norm(parts, axis=-1), 1.0, rtol=1e-5)
  pixel = feats[:, 1, 2]
  np.testing.assert_allclose(
    parts[:, 0], pixel / np.linalg.norm(pixel, axis=-1, keepdims=True), 1e-5
  )
  mean = feats.mean(axis=(1, 2))
  np.testing.assert_allclose(
    parts[:, 1], mean / np.linalg.norm(mean, axis=-1, keepdims=True), 1e-5
  )
  signed = np.asarray(attention.bilinear_attention_pool(maps, feats))
  np.testing.assert_allclose(np.linalg.norm(signed, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.sign(signed), np.sign(parts))
  with pytest.raises(ValueError, match="share"):
    attention.bilinear_attention_pool(maps[:, :2], feats)


def test_regional_independence_loss_by_hand():
  # Two parts in 2-D, one sample: part 0 = +x, part 1 = +y; both running
  # centres at +x.
  parts = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  centers = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  loss, new = attention.regional_independence_loss(
    parts, centers, momentum=0.5, intra_margin=0.0, inter_margin=3.0
  )
  # new centres: (1, 0) and (0.5, 0.5).
  np.testing.assert_allclose(np.asarray(new), [[1.0, 0.0], [0.5, 0.5]])
  # intra: part 0 at squared distance 0, part 1 at 0.5^2 + 0.5^2 = 0.5, mean
  # 0.25; inter: batch means (1, 0), (0, 1) at squared distance 2 < 3 -> 1.
  np.testing.assert_allclose(float(loss), 0.25 + 1.0, rtol=1e-6)
  # Parts on their centres and far apart cost nothing.
  loss0, _ = attention.regional_independence_loss(
    parts,
    jnp.array([[1.0, 0.0], [0.0, 1.0]]),
    momentum=0.5,
    intra_margin=0.0,
    inter_margin=1.0,
  )
  assert float(loss0) == 0.0


def test_centers_are_non_trainable_and_update_in_train_only():
  module = attention.MultiHeadSpatialAttention(
    CT, CS, num_maps=2, out_dim=8, aux_loss=True, rngs=nnx.Rngs(0)
  )
  params = nnx.state(module, nnx.Param)
  assert "centers" not in params
  assert "centers" in nnx.state(module, nnx.BatchStat)
  assert "centers" in nnx.state(module, attention.FeatureCenter)
  before = np.asarray(module.centers[...])
  np.testing.assert_allclose(np.linalg.norm(before, axis=-1), 1.0, rtol=1e-5)
  module.eval()
  out = module(*_features())
  assert out["aux"]["regional_independence"].shape == ()
  np.testing.assert_array_equal(np.asarray(module.centers[...]), before)
  module.train()
  module(*_features())
  after = np.asarray(module.centers[...])
  # after = (1 - a) * before + a * (batch mean of unit vectors), so the step
  # is non-zero and the batch-mean part has norm at most a.
  alpha = module.center_momentum
  step = np.linalg.norm(after - (1 - alpha) * before, axis=-1)
  assert np.all(step > 0) and np.all(step <= alpha + 1e-6), step


def test_aux_loss_training_separates_parts_and_tightens_clusters():
  module = attention.MultiHeadSpatialAttention(
    CT, CS, num_maps=3, out_dim=8, aux_loss=True, rngs=nnx.Rngs(1)
  )
  module.train()
  texture, semantic = _features(seed=3, n=8)
  optimizer = nnx.Optimizer(module, optax.adam(3e-3), wrt=nnx.Param)

  def aux(m):
    return m(texture, semantic)["aux"]["regional_independence"]

  @nnx.jit
  def step(m, opt):
    loss, grads = nnx.value_and_grad(aux)(m)
    opt.update(m, grads)
    return loss

  losses = [float(step(module, optimizer)) for _ in range(80)]
  # An untrained network's parts are near-identical (inter hinge active, far
  # from the random initial centres); training on the aux loss alone drives
  # both hinges to (almost) zero: parts distinct, each close to its centre.
  assert losses[0] > 1.0, losses[:3]
  assert losses[-1] < 0.05 * losses[0], losses[-5:]
  assert np.all(np.diff(losses[:20]) < 0), losses[:20]


def test_gradients_reach_every_attention_parameter():
  module = attention.MultiHeadSpatialAttention(
    CT, CS, num_maps=2, out_dim=8, aux_loss=True, rngs=nnx.Rngs(0)
  )
  module.train()
  texture, semantic = _features()
  target = jax.random.normal(jax.random.key(9), (N, 2, 8))

  def loss_fn(m):
    out = m(texture, semantic)
    return jnp.mean((out["parts"] - target) ** 2)

  grads = nnx.jit(nnx.grad(loss_fn))(module)
  for path, leaf in jax.tree.leaves_with_path(nnx.to_pure_dict(grads)):
    value = np.asarray(leaf)
    assert np.all(np.isfinite(value)), path
    assert np.abs(value).max() > 0, path


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="activation"):
    attention.MultiHeadSpatialAttention(
      CT, CS, activation="sigmoid", rngs=nnx.Rngs(0)
    )
  with pytest.raises(ValueError, match="num_maps"):
    attention.MultiHeadSpatialAttention(CT, CS, num_maps=0, rngs=nnx.Rngs(0))
  module = attention.MultiHeadSpatialAttention(CT, CS, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NHWC"):
    module(jnp.zeros((2, 8, 24)), jnp.zeros((2, 4, 4, 48)))
