"""Tests for asrid_jax.optim: schedule values, AdamW numbers, groups, plateau."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asrid_jax import optim


def _sched(name, total=100, lr=1.0, **kw):
  return optim.make_schedule(lr, dict(name=name, **kw), total)


def test_constant_and_warmup_cosine_values():
  const = _sched("constant", lr=0.3)
  assert float(const(0)) == pytest.approx(0.3)
  assert float(const(10_000)) == pytest.approx(0.3)
  wc = _sched("warmup_cosine", total=110, warmup_steps=10, end_factor=0.1)
  assert float(wc(0)) == pytest.approx(0.0)
  assert float(wc(5)) == pytest.approx(0.5)
  assert float(wc(10)) == pytest.approx(1.0)
  # Half-way through the cosine: 0.1 + 0.9 * 0.5.
  assert float(wc(60)) == pytest.approx(0.55, abs=1e-6)
  assert float(wc(110)) == pytest.approx(0.1, abs=1e-6)


def test_sgdr_restarts_with_period_multiplier():
  s = _sched("sgdr", total=70, cycle_steps=10, cycle_mult=2.0, end_factor=0.0)
  # Cycles of 10, 20, 40 steps: restarts at 10 and 30.
  assert float(s(0)) == pytest.approx(1.0)
  assert float(s(5)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(9)) < 0.05
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(20)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(30)) == pytest.approx(1.0)
  assert float(s(50)) == pytest.approx(0.5, abs=1e-6)


def test_onecycle_matches_torch_convention():
  s = _sched("onecycle", total=100, pct_start=0.3, div_factor=25.0)
  assert float(s(0)) == pytest.approx(1.0 / 25.0)
  assert float(s(30)) == pytest.approx(1.0)
  assert float(s(100)) == pytest.approx(1.0 / 25.0 / 1e4, rel=1e-4)
  assert float(s(15)) < float(s(30)) > float(s(60))


def test_unknown_schedule_is_refused():
  with pytest.raises(ValueError, match="unknown schedule 'cyclic'"):
    _sched("cyclic")


def _params():
  return {
    "backbone/conv/kernel": jnp.full((3,), 2.0),
    "backbone/bn/scale": jnp.full((2,), 1.0),
    "head/fc/kernel": jnp.full((3,), 2.0),
  }


def test_adamw_first_step_groups_and_frozen():
  params = _params()
  labels = optim.param_labels(params, frozen=frozenset({"backbone/bn/scale"}))
  assert labels == {
    "backbone/conv/kernel": "backbone",
    "backbone/bn/scale": "frozen",
    "head/fc/kernel": "heads",
  }
  cfg = dict(
    lr=0.1,
    weight_decay=0.01,
    backbone_lr_mult=0.5,
    schedule=dict(name="constant"),
  )
  opt = optim.make_optimizer(cfg, 10, labels)
  state = opt.tx.init(params)
  grads = {k: jnp.full_like(v, 3.0) for k, v in params.items()}
  updates, _ = opt.tx.update(grads, state, params)
  # First Adam step: m_hat/sqrt(v_hat) = sign(g) = 1; decoupled decay
  # lr * wd * p.  heads: -0.1 * (1 + 0.01 * 2); backbone at half the lr.
  np.testing.assert_allclose(updates["head/fc/kernel"], -0.102, rtol=1e-5)
  np.testing.assert_allclose(updates["backbone/conv/kernel"], -0.051, rtol=1e-5)
  np.testing.assert_array_equal(updates["backbone/bn/scale"], 0.0)


def test_global_norm_clipping_uses_all_gradients():
  params = {"a": jnp.zeros((1,)), "b": jnp.zeros((1,))}
  labels = optim.param_labels(params)
  # eps = 1 makes the first Adam step g / (|g| + 1): magnitude-sensitive.
  cfg = dict(lr=1.0, weight_decay=0.0, eps=1.0, clip_norm=1.0)
  opt = optim.make_optimizer(cfg, 10, labels)
  grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # norm 5
  updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
  np.testing.assert_allclose(updates["a"], [-0.6 / 1.6], rtol=1e-5)
  np.testing.assert_allclose(updates["b"], [-0.8 / 1.8], rtol=1e-5)


def test_plateau_is_fed_by_validation_only():
  params = {"head/w": jnp.ones((2,))}
  cfg = dict(
    lr=1.0,
    weight_decay=0.0,
    schedule=dict(name="plateau", factor=0.5, patience=1, cooldown=0),
  )
  opt = optim.make_optimizer(cfg, 10, optim.param_labels(params))
  state = opt.tx.init(params)
  grads = {"head/w": jnp.ones((2,))}
  # Training updates never move the plateau state.
  for _ in range(3):
    _, state = opt.tx.update(grads, state, params)
  assert float(optim.plateau_scale(state)) == 1.0
  state = optim.feed_validation_loss(opt, state, 1.0)  # best = 1.0
  state = optim.feed_validation_loss(opt, state, 0.5)  # improves
  state = optim.feed_validation_loss(opt, state, 0.6)  # plateau 1
  assert float(optim.plateau_scale(state)) == 1.0
  state = optim.feed_validation_loss(opt, state, 0.7)  # plateau 2 > patience
  assert float(optim.plateau_scale(state)) == 0.5
  updates, _ = opt.tx.update(grads, state, params)
  np.testing.assert_allclose(updates["head/w"], -0.5, rtol=1e-5)
  lrs = optim.learning_rates(opt, state, 3)
  assert float(lrs["lr"]) == pytest.approx(0.5)
  # Without a plateau schedule feeding is a no-op.
  opt2 = optim.make_optimizer(dict(lr=1.0), 10, optim.param_labels(params))
  s2 = opt2.tx.init(params)
  assert optim.feed_validation_loss(opt2, s2, 0.1) is s2


def test_plateau_state_survives_jit():
  params = {"head/w": jnp.ones((2,))}
  cfg = dict(lr=1.0, schedule=dict(name="plateau", factor=0.1, patience=0))
  opt = optim.make_optimizer(cfg, 10, optim.param_labels(params))
  feed = jax.jit(lambda s, v: optim.feed_validation_loss(opt, s, v))
  state = feed(opt.tx.init(params), 1.0)
  state = feed(state, 2.0)
  assert float(optim.plateau_scale(state)) == pytest.approx(0.1)


def test_ema_update_numbers():
  ema = {"w": jnp.array([0.0])}
  p = {"w": jnp.array([1.0])}
  # step 0: decay_t = min(0.99, 1/10) = 0.1 -> 0.9
  out = optim.ema_update(ema, p, 0.99, 0)
  np.testing.assert_allclose(out["w"], [0.9], rtol=1e-6)
  # large step: decay_t = 0.99 -> 0.01
  out = optim.ema_update(ema, p, 0.99, 10_000)
  np.testing.assert_allclose(out["w"], [0.01], rtol=1e-5)


def test_adamw_does_not_decay_biases_norm_scales_or_masked_keys():
  params = {
    "head/fc/kernel": jnp.full((2, 2), 2.0),
    "head/fc/bias": jnp.full((2,), 2.0),
    "head/norm/scale": jnp.full((2,), 2.0),
    "head/unused/kernel": jnp.full((2, 2), 2.0),
  }
  labels = optim.param_labels(params)
  cfg = dict(lr=0.1, weight_decay=0.5, schedule=dict(name="constant"))
  zero = {k: jnp.zeros_like(v) for k, v in params.items()}
  decay = {k: optim.default_decay(k) for k in params}
  decay["head/unused/kernel"] = False  # e.g. never reached by the loss
  opt = optim.make_optimizer(cfg, 10, labels, decay=decay)
  updates, _ = opt.tx.update(zero, opt.tx.init(params), params)
  # Zero gradient: the update is the decoupled decay -lr * wd * p alone.
  np.testing.assert_allclose(updates["head/fc/kernel"], -0.1, rtol=1e-6)
  for k in ("head/fc/bias", "head/norm/scale", "head/unused/kernel"):
    np.testing.assert_array_equal(updates[k], 0.0, err_msg=k)
  # The mask adds no optimizer-state leaves (old checkpoints still load).
  plain = optax.chain(
    optax.multi_transform({"heads": optax.adamw(opt.schedule)}, labels)
  )

  def paths(state):
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(p) for p, _ in flat]

  assert paths(opt.tx.init(params)) == paths(plain.init(params))
