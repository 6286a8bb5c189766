"""Tests for asrid_jax.losses: stable BCE and the ASRID loss weighting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asrid_jax import losses


def _naive_bce(x, y):
  p = 1.0 / (1.0 + np.exp(-x))
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_bce_matches_naive_formula_for_moderate_logits():
  rng = np.random.default_rng(0)
  x = rng.uniform(-8, 8, size=64)
  y = rng.integers(0, 2, size=64).astype(np.float64)
  got = np.asarray(losses.bce_with_logits(x, y))
  np.testing.assert_allclose(got, _naive_bce(x, y), rtol=1e-5, atol=1e-6)
  assert got.dtype == np.float32


def test_bce_is_stable_for_huge_logits():
  x = jnp.array([100.0, -100.0, 100.0, -100.0, 1e4, -1e4])
  y = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
  got = np.asarray(losses.bce_with_logits(x, y))
  # Right answers: ~0 when confident and right, |x| when confident and wrong.
  np.testing.assert_allclose(got, [0, 0, 100, 100, 0, 1e4], atol=1e-6)
  grads = jax.grad(lambda z: losses.bce_with_logits(z, y).sum())(x)
  assert np.all(np.isfinite(np.asarray(grads)))
  # d/dx = sigmoid(x) - y: -1 or +1 for wrong confident answers.
  np.testing.assert_allclose(np.asarray(grads), [0, 0, 1, -1, 0, -1])


def test_bce_with_soft_labels_is_minimised_at_matching_probability():
  logits = jnp.linspace(-3, 3, 601)
  values = losses.bce_with_logits(logits, 0.25)
  best = float(logits[jnp.argmin(values)])
  assert abs(best - math.log(0.25 / 0.75)) < 0.02


def _bce(x, y):
  return float(_naive_bce(np.float64(x), np.float64(y)))


def test_asrid_loss_weighting_by_hand():
  frame_logits = jnp.array([[1.0, -1.0, 2.0], [0.5, 0.0, -2.0]])
  clip_logit = jnp.array([3.0, -0.5])
  labels = jnp.array([1, 0])
  outputs = {"frame_logits": frame_logits, "clip_logit": clip_logit}
  static = (
    np.mean([_bce(1.0, 1), _bce(-1.0, 1), _bce(2.0, 1)])
    + np.mean([_bce(0.5, 0), _bce(0.0, 0), _bce(-2.0, 0)])
  ) / 2
  dynamic = (_bce(3.0, 1) + _bce(-0.5, 0)) / 2
  total, terms = losses.asrid_loss(outputs, labels, static_weight=0.8)
  np.testing.assert_allclose(float(terms["static"]), static, rtol=1e-6)
  np.testing.assert_allclose(float(terms["dynamic"]), dynamic, rtol=1e-6)
  np.testing.assert_allclose(
    float(total), 0.8 * static + 0.2 * dynamic, rtol=1e-6
  )
  np.testing.assert_allclose(float(terms["total"]), float(total))
  total95, _ = losses.asrid_loss(outputs, labels, static_weight=0.95)
  np.testing.assert_allclose(
    float(total95), 0.95 * static + 0.05 * dynamic, rtol=1e-6
  )


def test_static_only_outputs_have_no_dynamic_term():
  outputs = {"frame_logits": jnp.array([[2.0, -2.0]]), "aux": {}}
  total, terms = losses.asrid_loss(outputs, jnp.array([1]), static_weight=0.8)
  expected = (_bce(2.0, 1) + _bce(-2.0, 1)) / 2
  assert "dynamic" not in terms and "aux" not in terms
  np.testing.assert_allclose(float(total), expected, rtol=1e-6)


def test_aux_terms_are_reported_and_weighted():
  outputs = {
    "frame_logits": jnp.zeros((2, 1)),
    "aux": {"a": jnp.float32(0.5), "b": jnp.float32(1.5)},
  }
  labels = jnp.array([0, 1])
  total0, terms0 = losses.asrid_loss(outputs, labels)
  np.testing.assert_allclose(float(terms0["aux"]), 2.0)
  np.testing.assert_allclose(float(total0), math.log(2), rtol=1e-6)
  total1, _ = losses.asrid_loss(outputs, labels, aux_weight=0.1)
  np.testing.assert_allclose(float(total1), math.log(2) + 0.2, rtol=1e-6)


def test_mask_excludes_padding_rows():
  frame_logits = jnp.array([[1.0, 1.0], [-3.0, 4.0], [50.0, 50.0]])
  clip_logit = jnp.array([1.0, -3.0, 50.0])
  labels = jnp.array([1, 0, 0])  # the padding row would cost ~50
  outputs = {"frame_logits": frame_logits, "clip_logit": clip_logit}
  mask = jnp.array([True, True, False])
  total, terms = losses.asrid_loss(outputs, labels, mask=mask)
  ref_total, ref_terms = losses.asrid_loss(
    {k: v[:2] for k, v in outputs.items()}, labels[:2]
  )
  np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-6)
  np.testing.assert_allclose(
    float(terms["dynamic"]), float(ref_terms["dynamic"]), rtol=1e-6
  )
  # An all-padding batch gives 0, not NaN.
  total_empty, _ = losses.asrid_loss(outputs, labels, mask=jnp.zeros(3, bool))
  assert float(total_empty) == 0.0


def test_asrid_loss_rejects_bad_shapes_and_weights():
  outputs = {"frame_logits": jnp.zeros((2, 3))}
  with pytest.raises(ValueError, match="labels must be"):
    losses.asrid_loss(outputs, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="frame_logits"):
    losses.asrid_loss({"frame_logits": jnp.zeros(2)}, jnp.zeros((2,)))
  with pytest.raises(ValueError, match="static_weight"):
    losses.asrid_loss(outputs, jnp.zeros((2,)), static_weight=1.5)
