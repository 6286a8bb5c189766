"""Tests for asrid_jax.models.asrid: every paper variant end to end.

Compile time dominates on the 2-core CPU machine, so each variant is compiled
once (one jitted value-and-grad step at 64x64, T = 2, that also yields the
outputs checked for shapes), XLA optimisations are turned off for this module
and the 380x380 shapes of all variants come from abstract evaluation, with
one real 380x380 forward pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asrid_jax import losses
from asrid_jax.models import asrid, mobilenet_v3

B, T, SIZE = 2, 2, 64
DYNAMIC = ("dyn", "dyn_mix")
TORCHVISION_SMALL_PARAMS = 2_542_856  # sum(p.numel()) of mobilenet_v3_small
TORCHVISION_CLASSIFIER_PARAMS = 576 * 1024 + 1024 + 1024 * 1000 + 1000


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _images(seed, size=SIZE, b=B, t=T):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (b, t, size, size, 3), np.uint8))


def _tiny(variant, **kw):
  # Grouped depthwise convs compile ~1.5x faster than the shifted form on
  # CPU; both are checked against torch in mobilenet_v3_test.
  return asrid.ASRIDTiny(
    variant=variant,
    aux_loss=variant != "baseline",
    depthwise_impl="grouped",
    rngs=nnx.Rngs(0),
    **kw,
  )


def _flat(state):
  """{'a/b/c': array} from an nnx.State or a pure dict of arrays."""
  if isinstance(state, nnx.State):
    state = nnx.to_pure_dict(state)
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
    for path, leaf in jax.tree.leaves_with_path(state)
  }


@pytest.mark.parametrize("variant", sorted(asrid.VARIANTS))
def test_train_step_shapes_gradients_and_single_trace(variant):
  model = _tiny(variant)
  model.train()
  traces = []

  def loss_fn(m, images, labels, key):
    out = m(images, rngs=key)
    total, terms = losses.asrid_loss(out, labels, aux_weight=0.1)
    return total, (terms, out)

  @nnx.jit
  def step(m, images, labels, key):
    traces.append(1)
    return nnx.value_and_grad(loss_fn, has_aux=True)(m, images, labels, key)

  bn_before = _flat(nnx.state(model.backbone, nnx.BatchStat))
  labels = jnp.array([0, 1])
  (total, (terms, out)), grads = step(
    model, _images(0), labels, jax.random.key(0)
  )
  m_attn = 2  # ASRIDTiny.num_attention
  assert out["frame_logits"].shape == (B, T)
  assert out["frame_logits"].dtype == jnp.float32
  if variant in DYNAMIC:
    assert out["clip_logit"].shape == (B,)
    assert set(terms) >= {"static", "dynamic"}
  else:
    assert "clip_logit" not in out and "dynamic" not in terms
  if variant == "baseline":
    assert "attention" not in out and out["aux"] == {}
  else:
    assert out["attention"].shape == (B, T, SIZE // 8, SIZE // 8, m_attn)
    assert float(jnp.min(out["attention"])) >= 0.0
    assert set(out["aux"]) == {"regional_independence"}
  assert np.isfinite(float(total))

  # Every trainable tensor of every group gets a finite, non-zero gradient.
  groups = asrid.param_groups(model)
  expected = {"backbone", "static_head"}
  if variant != "baseline":
    expected.add("attention")
  if variant.endswith("mix"):
    expected.add("mix")
  if variant in DYNAMIC:
    expected.add("dynamic_head")
  assert set(groups) == expected
  # Exception: attention variants without Mix never read the backbone's
  # stride-32 stage (features after the stride-16 tap); its gradient must be
  # exactly zero there (and XLA drops that compute under jit).
  last_used = mobilenet_v3.TAP_INDICES["stride16"]
  grads = nnx.to_pure_dict(grads)
  for group in groups:
    flat = _flat(grads[group])
    assert flat, group
    for name, value in flat.items():
      assert np.all(np.isfinite(value)), (group, name)
      layer = int(name.split("/")[1]) if group == "backbone" else -1
      if variant in ("sta_pic", "sta_new", "dyn") and layer > last_used:
        assert np.abs(value).max() == 0, (group, name)
      else:
        assert np.abs(value).max() > 0, (group, name)

  # Train mode updated the BN running statistics.
  bn_after = _flat(nnx.state(model.backbone, nnx.BatchStat))
  assert any(np.abs(bn_after[k] - bn_before[k]).max() > 0 for k in bn_after)

  # Same shapes again: no retrace.
  step(model, _images(1), labels, jax.random.key(1))
  step(model, _images(2), labels, jax.random.key(2))
  assert len(traces) == 1


def test_train_vs_eval_and_determinism():
  model = _tiny("dyn_mix", dropout=0.3)
  images = _images(5)

  @nnx.jit
  def forward(m, x, key):
    return m(x, rngs=key)

  def bn_stats(m):
    return _flat(nnx.state(m, nnx.BatchStat))

  # Eval: running statistics untouched, dropout off (keys do not matter),
  # uint8 and float [0, 1] inputs agree.
  model.eval()
  before = bn_stats(model)
  e1 = forward(model, images, jax.random.key(0))
  e2 = forward(model, images, jax.random.key(1))
  e3 = forward(model, images.astype(jnp.float32) / 255.0, jax.random.key(0))
  after = bn_stats(model)
  for k in before:
    np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  np.testing.assert_array_equal(e1["clip_logit"], e2["clip_logit"])
  np.testing.assert_array_equal(e1["frame_logits"], e2["frame_logits"])
  np.testing.assert_allclose(
    e1["frame_logits"], e3["frame_logits"], rtol=1e-4, atol=1e-4
  )

  # Train: statistics (and attention centres) move; a fixed key gives the
  # same outputs from the same state, another key different ones.
  model.train()
  snapshot = nnx.clone(model)
  t1 = forward(model, images, jax.random.key(0))
  after_train = bn_stats(model)
  assert any(np.abs(after_train[k] - before[k]).max() > 0 for k in before)
  centers = "attention/centers"
  assert np.abs(after_train[centers] - before[centers]).max() > 0
  t2 = forward(snapshot, images, jax.random.key(0))
  np.testing.assert_array_equal(t1["clip_logit"], t2["clip_logit"])
  np.testing.assert_array_equal(t1["frame_logits"], t2["frame_logits"])
  t3 = forward(nnx.clone(snapshot), images, jax.random.key(7))
  assert np.abs(np.asarray(t1["clip_logit"] - t3["clip_logit"])).max() > 1e-5

  # Train mode with dropout and no keys is a clear error.
  with pytest.raises(ValueError, match="rngs"):
    model(images)


def test_same_seed_same_parameters():
  a = _flat(nnx.state(_tiny("sta_new"), nnx.Param))
  b = _flat(nnx.state(_tiny("sta_new"), nnx.Param))
  c = _flat(
    nnx.state(asrid.ASRIDTiny(variant="sta_new", rngs=nnx.Rngs(1)), nnx.Param)
  )
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert any(np.abs(a[k] - c[k]).max() > 0 for k in a)


@pytest.mark.parametrize(
  "dtype,variants",
  [("float32", sorted(asrid.VARIANTS)), ("bfloat16", ["baseline", "dyn_mix"])],
)
def test_full_size_shapes_at_380(dtype, variants):
  x = jax.ShapeDtypeStruct((1, 3, 380, 380, 3), jnp.uint8)
  for variant in variants:
    model = asrid.ASRID(variant=variant, dtype=dtype, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, x)
    assert out["frame_logits"].shape == (1, 3), variant
    assert out["frame_logits"].dtype == jnp.float32, variant
    if variant in DYNAMIC:
      assert out["clip_logit"].shape == (1,)
      assert out["clip_logit"].dtype == jnp.float32
    if variant != "baseline":
      # 380 -> 190 -> 95 -> 48 at stride 8 (torch rounds up), 4 maps.
      assert out["attention"].shape == (1, 3, 48, 48, 4), variant
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params), variant


def test_real_forward_at_380():
  model = asrid.ASRID(variant="dyn_mix", rngs=nnx.Rngs(0))
  model.eval()
  out = nnx.jit(lambda m, x: m(x))(model, _images(3, size=380, b=1))
  assert out["frame_logits"].shape == (1, 2)
  assert out["clip_logit"].shape == (1,)
  assert out["attention"].shape == (1, 2, 48, 48, 4)
  for leaf in jax.tree.leaves(out):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_param_counts():
  counts = {
    v: asrid.count_params(asrid.ASRID(variant=v, rngs=nnx.Rngs(0)))
    for v in ("baseline", "sta_pic", "sta_new", "dyn_mix")
  }
  # The backbone is torchvision's mobilenet_v3_small without its classifier.
  assert counts["baseline"]["backbone"] == (
    TORCHVISION_SMALL_PARAMS - TORCHVISION_CLASSIFIER_PARAMS
  )
  assert counts["baseline"]["static_head"] == 576 + 1
  # sta_pic and sta_new are one architecture (they differ in sampling only).
  assert counts["sta_pic"] == counts["sta_new"]
  assert set(counts["dyn_mix"]) == set(asrid.PARAM_GROUPS) | {"total"}
  assert counts["dyn_mix"]["total"] == sum(
    v for k, v in counts["dyn_mix"].items() if k != "total"
  )


def test_bad_configuration_and_inputs_are_rejected():
  with pytest.raises(ValueError, match="unknown variant"):
    asrid.ASRIDTiny(variant="dynamic", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dtype"):
    asrid.ASRIDTiny(variant="dyn", dtype="float16", rngs=nnx.Rngs(0))
  model = _tiny("baseline")
  model.eval()
  with pytest.raises(ValueError, match="B, T, H, W, 3"):
    model(jnp.zeros((2, SIZE, SIZE, 3), jnp.uint8))
  with pytest.raises(ValueError, match="uint8"):
    model(jnp.zeros((1, 1, SIZE, SIZE, 3), jnp.int32))
