"""Periodic validation: a fixed stratified subset, and a SIGTERM cuts it."""

import numpy as np

from asrid_jax import scoring
from asrid_jax.data import index as index_lib
from asrid_jax.data import pipeline, synthetic


def test_subset_is_fixed_stratified_and_what_the_pass_reads(tmp_path):
  synthetic.write_synthetic_shards(
    tmp_path,
    videos_per_split={"val": 20},
    frames=(2, 4),
    max_faces=1,
    image_size=16,
    fake_fraction=0.75,
    seed=4,
  )
  idx = index_lib.load_split_index(tmp_path, "val")
  labels = idx.video_labels()
  sub = pipeline.subset_videos(idx, 8)
  assert len(sub) == 8
  # The split's label shares: 15 FAKE / 5 REAL -> 6 / 2.
  assert int(labels[sub].sum()) == 6
  np.testing.assert_array_equal(sub, pipeline.subset_videos(idx, 8))
  assert len(pipeline.subset_videos(idx, 0)) == 20  # 0 = all
  cfg = dict(dir=str(tmp_path), image_size=16, clip_len=2, read_threads=1)
  seen = set()
  for b in pipeline.make_eval_iterator(
    split="val", global_batch_size=4, sharding=None, max_videos=8, **cfg
  ):
    seen.update(b["video_idx"][b["_mask"]].tolist())
  assert seen == set(sub.tolist())
  full = pipeline.eval_num_batches(split="val", global_batch_size=4, **cfg)
  part = pipeline.eval_num_batches(
    split="val", global_batch_size=4, max_videos=8, **cfg
  )
  assert part < full


def test_collect_stops_when_asked():
  def batches():
    for i in range(10):
      yield {
        "image": np.full((2, 1, 2, 2, 3), 10 * i, np.uint8),
        "label": np.array([0, 1]),
        "video_idx": np.array([2 * i, 2 * i + 1]),
        "face_index": np.zeros(2, np.int64),
        "frame_order": np.zeros((2, 1), np.int64),
      }

  def forward(images, frame_order=None):
    p = np.asarray(images)[..., 0, 0, 0] / 255.0
    return {"frame_probs": p}

  asked = []

  def stop(i):
    asked.append(i)
    return i == 3

  preds = scoring.collect(forward, batches(), progress=False, should_stop=stop)
  assert preds.interrupted and asked == [0, 1, 2, 3]
  assert preds.frame_video.tolist() == [0, 1, 2, 3, 4, 5]  # 3 batches kept
  whole = scoring.collect(forward, batches(), progress=False)
  assert not whole.interrupted and whole.frame_video.size == 20
