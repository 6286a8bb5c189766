"""Tests for the Flax MobileNetV3-Small backbone (no torch needed here).

Numerical parity with torchvision is in convert_test.py; this file covers
shapes, modes, frozen batch norm, bf16, determinism and tracing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from asrid_jax.models import mobilenet_v3 as mv

TAP_CHANNELS = {"stride8": 24, "stride16": 48, "last": 576}
TAP_STRIDES = {"stride8": 8, "stride16": 16, "last": 32}


pytestmark = pytest.mark.usefixtures("fast_compiles")


@functools.partial(
  nnx.jit, static_argnames=("num_classes", "frozen_bn", "dtype")
)
def _build(key, *, num_classes, frozen_bn, dtype):
  # A jitted constructor compiles initialisation once per configuration
  # (eager init compiles each distinct random-kernel shape separately).
  return mv.MobileNetV3Small(
    num_classes=num_classes,
    frozen_bn=frozen_bn,
    dtype=dtype,
    rngs=nnx.Rngs(key),
  )


def _make(seed, *, num_classes=0, frozen_bn=False, dtype=jnp.float32):
  return _build(
    jax.random.key(seed),
    num_classes=num_classes,
    frozen_bn=frozen_bn,
    dtype=dtype,
  )


@pytest.fixture(scope="module")
def model() -> mv.MobileNetV3Small:
  return _make(0, num_classes=10)


def _images(key: int, batch: int, size: int) -> jax.Array:
  return jax.random.normal(jax.random.key(key), (batch, size, size, 3))


@nnx.jit
def _forward(model, x):
  return model(x)


def _batch_stats(model) -> list[np.ndarray]:
  return [
    np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  ]


def test_make_divisible_matches_torchvision_se_widths():
  # SE squeeze widths of mobilenet_v3_small, read off torchvision's weights.
  expanded = [16, 96, 240, 240, 120, 144, 288, 576, 576]
  squeeze = [8, 24, 64, 64, 32, 40, 72, 144, 144]
  assert [mv.make_divisible(e // 4) for e in expanded] == squeeze


def test_parameter_count_matches_torchvision(model):
  # torchvision mobilenet_v3_small(num_classes=10): 2,542,856 - 1000 * 1024
  # - 1000 + 10 * 1024 + 10 parameters (weights + biases + BN affine).
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(p.size for p in params) == 2_542_856 - 1_025_000 + 10_250
  assert all(p.dtype == jnp.float32 for p in params)


@pytest.mark.parametrize("impl", ["grouped", "shifted"])
def test_tap_shapes_64(model, impl):
  model.set_attributes(depthwise_impl=impl)
  model.eval()
  out = _forward(model, _images(0, 2, 64))
  for name, channels in TAP_CHANNELS.items():
    size = 64 // TAP_STRIDES[name]
    assert out[name].shape == (2, size, size, channels), name
  assert out["pooled"].shape == (2, 576)
  assert out["logits"].shape == (2, 10)
  assert out["logits"].dtype == jnp.float32


def test_tap_shapes_380_and_odd_sizes_round_up(model):
  model.set_attributes(depthwise_impl="auto")
  model.eval()
  out = _forward(model, _images(1, 1, 380))
  # torch's (k-1)//2 padding: 380 -> 190 -> 95 -> 48 -> 24 -> 12.
  assert out["stride8"].shape == (1, 48, 48, 24)
  assert out["stride16"].shape == (1, 24, 24, 48)
  assert out["last"].shape == (1, 12, 12, 576)
  assert np.isfinite(np.asarray(out["logits"])).all()


def test_headless_backbone_has_no_classifier():
  backbone = _make(0)
  backbone.eval()
  out = _forward(backbone, _images(2, 1, 32))
  assert "logits" not in out and out["pooled"].shape == (1, 576)
  paths = [p for p, _ in nnx.to_flat_state(nnx.state(backbone, nnx.Param))]
  assert not any(p[0] == "classifier" for p in paths)


def test_depthwise_impl_resolution_and_validation():
  assert mv.resolve_depthwise_impl("auto") == "shifted_vjp"  # tests run on CPU
  assert mv.resolve_depthwise_impl("grouped") == "grouped"
  with pytest.raises(ValueError, match="depthwise_impl"):
    mv.resolve_depthwise_impl("fast")
  with pytest.raises(ValueError, match="NHWC"):
    _make(0)(jnp.zeros((1, 3, 8, 8)))


def test_train_updates_batch_stats_only_in_train_mode(model):
  model.set_attributes(depthwise_impl="shifted")
  x = _images(3, 2, 64) * 2.0 + 0.5
  model.eval()
  saved = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  before = _batch_stats(model)
  first = _forward(model, x)["last"]
  assert all(
    np.array_equal(a, b)
    for a, b in zip(before, _batch_stats(model), strict=True)
  )
  model.train()
  _forward(model, x)
  after = _batch_stats(model)
  changed = [
    not np.array_equal(a, b) for a, b in zip(before, after, strict=True)
  ]
  assert all(changed), f"{changed.count(False)} BN statistics did not move"
  model.eval()
  second = _forward(model, x)["last"]
  # Running statistics moved, so eval outputs moved too.
  assert not np.allclose(first, second)
  # Restore the shared fixture's statistics for the other tests.
  nnx.update(model, saved)
  assert all(
    np.array_equal(a, b)
    for a, b in zip(before, _batch_stats(model), strict=True)
  )


def test_frozen_bn_is_fixed_and_untrained():
  backbone = _make(1, frozen_bn=True)
  # BN scale/bias are FrozenParam: not nnx.Param, so optimisers skip them.
  norm = backbone.features[0][1]
  assert isinstance(norm.scale, mv.FrozenParam)
  assert not isinstance(norm.scale, nnx.Param)
  frozen = jax.tree.leaves(nnx.state(backbone, mv.FrozenParam))
  assert len(frozen) == 2 * 34  # 34 batch norms, scale + bias each
  # Running statistics unlike the batch's, so using them is visible (a
  # large mean shift would kill the ReLUs of this untrained net).
  stats = nnx.state(backbone, nnx.BatchStat)
  stats = jax.tree.map(lambda v: 0.5 * v + 0.01, stats)
  nnx.update(backbone, stats)
  stats_before = _batch_stats(backbone)
  x = _images(4, 2, 32)
  backbone.eval()
  eval_out = _forward(backbone, x)
  backbone.train()
  train_out = _forward(backbone, x)
  for name in ("stride8", "stride16", "last"):
    np.testing.assert_array_equal(eval_out[name], train_out[name])
  assert all(
    np.array_equal(a, b)
    for a, b in zip(stats_before, _batch_stats(backbone), strict=True)
  )
  # One optimizer step over nnx.Param moves convs but not the frozen BN.
  optimizer = nnx.Optimizer(backbone, optax.sgd(0.1), wrt=nnx.Param)
  scale_before = np.asarray(norm.scale[...])
  kernel_before = np.asarray(backbone.features[0][0].kernel[...])

  @nnx.jit
  def step(backbone, optimizer, x):
    # stride8: an untrained net with untrained running statistics shrinks
    # activations layer by layer, so deeper taps give ~1e-18 gradients.
    loss_fn = lambda m: jnp.mean(m(x)["stride8"] ** 2)
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(backbone)
    optimizer.update(backbone, grads)
    return grads

  grads = step(backbone, optimizer, x)
  assert not jax.tree.leaves(nnx.state(grads, mv.FrozenParam))
  np.testing.assert_array_equal(scale_before, norm.scale[...])
  kernel_grad = np.asarray(grads["features"][0][0]["kernel"][...])
  assert np.abs(kernel_grad).max() > 0
  np.testing.assert_allclose(
    backbone.features[0][0].kernel[...],
    kernel_before - 0.1 * kernel_grad,
    rtol=1e-6,
    atol=1e-9,
  )


def test_bfloat16_compute_keeps_float32_params():
  # The same seed gives the same float32 weights whatever the compute dtype.
  ref_model, bf16 = _make(2), _make(2, dtype=jnp.bfloat16)
  assert all(
    p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))
  )
  ref_model.eval(), bf16.eval()
  x = _images(5, 2, 64)
  ref = _forward(ref_model, x)
  out = _forward(bf16, x)
  assert out["last"].dtype == jnp.bfloat16
  assert out["pooled"].dtype == jnp.float32
  for name in ("stride8", "stride16", "last", "pooled"):
    a = np.asarray(out[name], np.float32)
    b = np.asarray(ref[name])
    rel = np.abs(a - b).max() / np.abs(b).max()
    # bf16 has an 8-bit mantissa: ~0.4% per op, a few % after 13 blocks.
    assert 0 < rel < 0.1, (name, rel)


def test_determinism_for_a_fixed_key():
  a, b, c = _make(7), _make(7), _make(8)
  leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))
  assert all(
    np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True)
  )
  assert not np.array_equal(leaves(a)[0], leaves(c)[0])
  x = _images(6, 1, 32)
  a.eval(), b.eval()
  np.testing.assert_array_equal(_forward(a, x)["last"], _forward(b, x)["last"])


def test_jitted_forward_traces_once_per_shape(model):
  model.set_attributes(depthwise_impl="shifted")
  model.eval()
  traces = []

  @nnx.jit
  def forward(model, x):
    traces.append(x.shape)
    return model(x)["pooled"]

  for key in range(3):
    forward(model, _images(key, 1, 32))
  assert len(traces) == 1
  forward(model, _images(0, 1, 64))
  assert len(traces) == 2
