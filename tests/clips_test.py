"""How clips are cut and masked: no repeated frame the model never trained on.

Evaluation and predict used to pad the last clip of every track by repeating
its last frame (a quarter of all clips for 30-frame tracks and clips of 8),
and the padding entered the temporal head's attention and time mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asrid_jax import predict
from asrid_jax.data import index as index_lib
from asrid_jax.data import pipeline, synthetic
from asrid_jax.data import source as source_lib
from asrid_jax.models import temporal


def test_clip_frames_tail_is_the_last_real_frames():
  np.testing.assert_array_equal(
    source_lib.clip_frames(10, 4), [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
  )
  np.testing.assert_array_equal(
    source_lib.clip_frames(8, 4), [[0, 1, 2, 3], [4, 5, 6, 7]]
  )
  # Only a track shorter than a clip is padded.
  np.testing.assert_array_equal(source_lib.clip_frames(3, 4), [[0, 1, 2, -1]])
  for n in range(1, 40):
    f = source_lib.clip_frames(n, 8)
    assert len(f) == -(-n // 8)
    assert set(f[f >= 0].tolist()) == set(range(n))  # every frame covered
    if n >= 8:
      assert (f >= 0).all() and (np.diff(f, axis=1) == 1).all()


def test_predict_cuts_clips_as_evaluation_does():
  crops = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones(
    (1, 8, 8, 3), np.uint8
  )
  clips, orders = predict.model_inputs(
    crops, image_size=8, clip_len=4, jpeg_quality=None
  )
  np.testing.assert_array_equal(orders, source_lib.clip_frames(6, 4))
  np.testing.assert_array_equal(
    clips[:, :, 0, 0, 0], [[0, 1, 2, 3], [2, 3, 4, 5]]
  )
  clips, orders = predict.model_inputs(
    crops[:2], image_size=8, clip_len=4, jpeg_quality=None
  )
  np.testing.assert_array_equal(orders, [[0, 1, -1, -1]])
  np.testing.assert_array_equal(clips[0, :, 0, 0, 0], [0, 1, 1, 1])


def test_eval_pipeline_tail_clips_hold_real_frames(tmp_path):
  synthetic.write_synthetic_shards(
    tmp_path,
    videos_per_split={"test": 4},
    frames=(3, 11),
    image_size=16,
    seed=2,
  )
  t = 4
  padded, clips = 0, 0
  for b in pipeline.make_eval_iterator(
    split="test",
    global_batch_size=4,
    sharding=None,
    dir=str(tmp_path),
    image_size=16,
    clip_len=t,
    read_threads=1,
  ):
    for row, ok in zip(b["frame_order"], b["_mask"], strict=True):
      if not ok:
        continue
      clips += 1
      real = row[row >= 0]
      assert (np.diff(real) > 0).all()
      padded += int((row < 0).any())
  # The synthetic tracks have 3..11 frames: only 3-frame tracks pad.
  idx = index_lib.load_split_index(str(tmp_path), "test")
  lengths = idx.track_lengths
  assert clips == int(np.sum(-(-lengths // t)))
  assert padded == int(np.sum(lengths < t))


@pytest.fixture(scope="module")
def head():
  return temporal.TemporalHead(
    6,
    width=8,
    num_layers=2,
    num_heads=2,
    mlp_dim=16,
    dropout=0.0,
    rngs=nnx.Rngs(0),
  )


def test_temporal_head_ignores_masked_frames(head):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 6)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  out = head(x, mask=mask)
  # Whatever the padding holds, the clip logit does not move...
  noise = jnp.asarray(rng.standard_normal((3, 5, 6)), jnp.float32) * 10
  moved = head(jnp.where(mask[..., None], x, noise), mask=mask)
  np.testing.assert_allclose(out, moved, rtol=1e-5, atol=1e-5)
  # ...and equals the head on the real frames alone.
  for i, n in enumerate((5, 3, 1)):
    alone = head(x[i : i + 1, :n])
    np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-5)
  # Unmasked, the padding does change the logit (the old behaviour).
  assert abs(float(head(x)[1]) - float(out[1])) > 1e-4
  # A row with no real frame (evaluation padding) stays finite.
  empty = head(x, mask=jnp.zeros((3, 5), bool))
  assert bool(jnp.all(jnp.isfinite(empty)))
  assert jax.tree.leaves(nnx.state(head))  # the head has parameters
