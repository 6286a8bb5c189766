"""Tests for the grain input pipeline on small synthetic shards."""

import collections
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from asrid_jax.data import index as index_lib
from asrid_jax.data import pipeline, records, source, synthetic

SIZE = 32  # pipeline image_size; the stored crops are 40x40 (resized)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("shards")
  synthetic.write_synthetic_shards(
    d,
    videos_per_split={"train": 10, "val": 5, "test": 3},
    image_size=40,
    seed=1,
  )
  return d


def truth(data_dir, split):
  """{(video_id, face, order): label} read straight from the shards."""
  out = {}
  for shard in records.list_shards(data_dir, split):
    for data in records.iter_records(shard):
      r = records.FaceRecord.from_bytes(data)
      out[(r.video_id, r.face_index, r.frame_order)] = r.label
  return out


def cfg(data_dir, **kw):
  base = dict(dir=str(data_dir), image_size=SIZE, clip_len=4, read_threads=1)
  return {**base, **kw}


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), k)


def eval_frames(data_dir, split, **kw):
  """(video_id, face, order) of every real frame an eval pass yields."""
  ids = pipeline.video_ids(data_dir, split)
  seen, padding = [], 0
  for b in pipeline.make_eval_iterator(split=split, sharding=None, **kw):
    for i in range(len(b["label"])):
      if not b["_mask"][i]:
        padding += 1
        assert b["video_idx"][i] == -1 and not b["image"][i].any()
        continue
      for order in b["frame_order"][i]:
        if order >= 0:
          seen.append(
            (ids[b["video_idx"][i]], int(b["face_index"][i]), int(order))
          )
  return seen, padding


# ---------------------------------------------------------------- the index


def test_meta_cache_is_built_once_and_invalidated(
  data_dir, tmp_path, monkeypatch
):
  d = tmp_path / "copy"
  shutil.copytree(data_dir, d)
  for p in d.rglob("*" + index_lib.META_SUFFIX):
    p.unlink()  # as shards written before metadata came with them
  first = index_lib.load_split_index(d, "val")
  metas = sorted((d / "val").glob("*" + index_lib.META_SUFFIX))
  assert len(metas) == len(records.list_shards(d, "val"))

  def no_scan(shard):
    raise AssertionError(f"re-parsed {shard}")

  monkeypatch.setattr(index_lib, "_scan_shard", no_scan)
  index_lib._CACHE.clear()
  again = index_lib.load_split_index(d, "val")
  np.testing.assert_array_equal(first.track_records, again.track_records)
  # A touched (or copied) shard keeps its cache: validity is its content.
  shard = records.list_shards(d, "val")[0]
  os.utime(shard, ns=(1, 1))
  index_lib._CACHE.clear()
  index_lib.load_split_index(d, "val")
  # A shard whose content changed (here: one record dropped) is parsed again.
  recs = list(records.iter_records(shard))
  meta = records.meta_path(shard).read_bytes()
  with records.ShardWriter(shard) as w:
    for data in recs[:-1]:
      w.write(data)
  records.meta_path(shard).write_bytes(meta)  # the old shard's metadata
  index_lib._CACHE.clear()
  with pytest.raises(AssertionError, match="re-parsed"):
    index_lib.load_split_index(d, "val")


def test_index_tables_match_the_shards(data_dir):
  idx = index_lib.load_split_index(data_dir, "train")
  want = truth(data_dir, "train")
  assert idx.num_records == len(want)
  assert list(idx.video_ids) == sorted({k[0] for k in want})
  for t in range(idx.num_tracks):
    recs = idx.track_records[idx.track_starts[t] : idx.track_starts[t + 1]]
    assert np.all(idx.video[recs] == idx.track_video[t])
    assert np.all(idx.face_index[recs] == idx.track_face[t])
    assert np.all(np.diff(idx.frame_order[recs]) > 0)
  counts = pipeline.label_counts(data_dir, "train", unit="record")
  assert counts[1] == sum(want.values())
  assert counts[0] == len(want) - counts[1]
  videos = pipeline.label_counts(data_dir, "train")
  assert videos[0] + videos[1] == len(idx.video_ids)


def test_missing_split_and_corrupt_record_name_the_file(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="nosuch"):
    index_lib.load_split_index(data_dir, "nosuch")
  d = tmp_path / "bad"
  shutil.copytree(data_dir, d)
  shard = records.list_shards(d, "test")[0]
  offset, length = records.read_index(shard)[1]
  raw = bytearray(shard.read_bytes())
  raw[int(offset) + int(length) // 2] ^= 0xFF
  shard.write_bytes(bytes(raw))
  with pytest.raises(records.CorruptRecordError, match=shard.name):
    index_lib.load_split_index(d, "test", cache=False)
  src = source.ShardSource([str(shard)])
  with pytest.raises(records.CorruptRecordError, match="checksum"):
    src[1]


# ------------------------------------------------------------- evaluation


@pytest.mark.parametrize("sampling", ["picture", "video"])
def test_eval_sees_every_record_exactly_once(data_dir, sampling):
  want = truth(data_dir, "val")
  seen, padding = eval_frames(
    data_dir, "val", global_batch_size=8, **cfg(data_dir, sampling=sampling)
  )
  # Every record is seen; a track's tail clip (its last T frames) repeats
  # frames of the clip before it, which frame metrics count once.
  assert set(seen) == set(want.keys())
  if sampling == "picture":
    assert collections.Counter(seen) == collections.Counter(want.keys())
  assert padding < 8  # only the last batch is padded


def test_eval_clips_stay_in_one_track_in_frame_order(data_dir):
  idx = index_lib.load_split_index(data_dir, "val")
  lengths = {
    (int(v), int(f)): int(n)
    for v, f, n in zip(
      idx.track_video, idx.track_face, idx.track_lengths, strict=True
    )
  }
  num_clips = 0
  for b in pipeline.make_eval_iterator(
    split="val", global_batch_size=4, sharding=None, **cfg(data_dir)
  ):
    for i in np.flatnonzero(b["_mask"]):
      order = b["frame_order"][i]
      n = lengths[(int(b["video_idx"][i]), int(b["face_index"][i]))]
      valid = order[order >= 0]
      # Clips start at a multiple of clip_len, except the tail clip, which
      # is the track's last 4 frames; -1 (repeated last frame) only in a
      # track shorter than a clip.
      assert valid[0] % 4 == 0 or valid[-1] == n - 1
      assert np.all(np.diff(valid) == 1)
      assert np.all(order[len(valid) :] == -1) and valid[-1] < n
      assert len(valid) == min(4, n)
      if len(valid) < 4:
        assert valid[-1] == n - 1
        np.testing.assert_array_equal(
          b["image"][i, len(valid) :],
          np.broadcast_to(
            b["image"][i, len(valid) - 1], b["image"][i, len(valid) :].shape
          ),
        )
      num_clips += 1
  assert num_clips == sum(-(-n // 4) for n in lengths.values())


def test_eval_images_are_the_stored_crops(data_dir):
  ids = pipeline.video_ids(data_dir, "test")
  crops = {}
  for shard in records.list_shards(data_dir, "test"):
    for data in records.iter_records(shard):
      r = records.FaceRecord.from_bytes(data)
      crops[(r.video_id, r.face_index, r.frame_order)] = r.decode_image()
  b = next(
    pipeline.make_eval_iterator(
      split="test",
      global_batch_size=4,
      sharding=None,
      **cfg(data_dir, sampling="picture", image_size=40),
    )
  )
  for i in range(4):
    key = (
      ids[b["video_idx"][i]],
      int(b["face_index"][i]),
      int(b["frame_order"][i, 0]),
    )
    # One codec (records.decode_jpeg) everywhere: the pixels are identical.
    np.testing.assert_array_equal(b["image"][i, 0], crops[key])


def test_two_processes_read_disjoint_complete_parts(data_dir):
  want = truth(data_dir, "val")
  parts, counts = [], []
  for p in range(2):
    kw = cfg(data_dir, sampling="picture", process_index=p, process_count=2)
    seen, _ = eval_frames(data_dir, "val", global_batch_size=4, **kw)
    parts.append(set(seen))
    counts.append(
      pipeline.eval_num_batches(split="val", global_batch_size=4, **kw)
    )
  assert counts[0] == counts[1]  # lock step
  assert not parts[0] & parts[1]
  assert parts[0] | parts[1] == set(want)
  # Training: one epoch of each process (local batch 1) is a permutation of
  # its own part; the parts are disjoint and complete too.
  train = truth(data_dir, "train")
  ids = pipeline.video_ids(data_dir, "train")
  got = []
  for p in range(2):
    it = pipeline.make_train_iterator(
      global_batch_size=2,
      sharding=None,
      seed=3,
      **cfg(data_dir, sampling="picture", process_index=p, process_count=2),
    )
    n = len(train) // 2 + (p < len(train) % 2)
    got.append(
      [
        (
          ids[b["video_idx"][0]],
          int(b["face_index"][0]),
          int(b["frame_order"][0, 0]),
        )
        for b in take(it, n)
      ]
    )
  assert len(set(got[0])) == len(got[0]) and len(set(got[1])) == len(got[1])
  assert not set(got[0]) & set(got[1])
  assert set(got[0]) | set(got[1]) == set(train)


# --------------------------------------------------------------- training


@pytest.mark.parametrize("sampling,t", [("picture", 1), ("video", 4)])
def test_train_shapes_and_dtypes(data_dir, sampling, t):
  it = pipeline.make_train_iterator(
    global_batch_size=4,
    sharding=None,
    seed=0,
    **cfg(data_dir, sampling=sampling),
  )
  b = next(it)
  assert sorted(b) == [
    "face_index",
    "frame_order",
    "image",
    "label",
    "video_idx",
  ]
  assert (
    b["image"].shape == (4, t, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
  )
  assert b["frame_order"].shape == (4, t) and b["frame_order"].dtype == np.int32
  for k in ("label", "video_idx", "face_index"):
    assert b[k].shape == (4,) and b[k].dtype == np.int32


def test_train_clips_never_cross_tracks(data_dir):
  idx = index_lib.load_split_index(data_dir, "train")
  labels = idx.video_labels()
  it = pipeline.make_train_iterator(
    global_batch_size=8, sharding=None, seed=5, **cfg(data_dir, clip_len=5)
  )
  starts = set()
  for b in take(it, 6):
    for i in range(8):
      v, f = int(b["video_idx"][i]), int(b["face_index"][i])
      t = np.flatnonzero((idx.track_video == v) & (idx.track_face == f))
      assert len(t) == 1
      n = int(idx.track_lengths[t[0]])
      order = b["frame_order"][i]
      valid = order[order >= 0]
      assert len(valid) == min(5, n) and np.all(np.diff(valid) == 1)
      assert 0 <= valid[0] and valid[-1] < n
      assert b["label"][i] == labels[v]
      starts.add(int(valid[0]))
  assert len(starts) > 3  # random clip starts, not always 0


def test_short_tracks_skip(data_dir):
  idx = index_lib.load_split_index(data_dir, "train")
  ex, _ = source.make_examples(idx, "video", 8, "skip")
  assert np.all(idx.track_lengths[ex[:, 0]] >= 8)
  ex_pad, _ = source.make_examples(idx, "video", 8, "pad")
  assert set(ex_pad[:, 0]) == set(range(idx.num_tracks))


def test_same_seed_same_batches_different_seed_different(data_dir):
  def run(seed):
    it = pipeline.make_train_iterator(
      global_batch_size=4,
      sharding=None,
      seed=seed,
      **cfg(data_dir, augment=True, sbi_prob=0.5),
    )
    return take(it, 3)

  a, b, c = run(7), run(7), run(8)
  assert_batches_equal(a, b)
  assert any(
    not np.array_equal(x["image"], y["image"])
    for x, y in zip(a, c, strict=True)
  )


def test_epochs_are_reshuffled(data_dir):
  n = len(truth(data_dir, "train"))
  it = pipeline.make_train_iterator(
    global_batch_size=1,
    sharding=None,
    seed=2,
    **cfg(data_dir, sampling="picture"),
  )
  keys = [
    (
      int(b["video_idx"][0]),
      int(b["face_index"][0]),
      int(b["frame_order"][0, 0]),
    )
    for b in take(it, 2 * n)
  ]
  assert sorted(keys[:n]) == sorted(keys[n:]) and len(set(keys[:n])) == n
  assert keys[:n] != keys[n:]


def test_state_restored_mid_epoch_continues_identically(data_dir):
  kw = dict(global_batch_size=4, sharding=None, seed=11)
  kw.update(cfg(data_dir, augment=True, sbi_prob=0.3))
  it = pipeline.make_train_iterator(**kw)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  fresh = pipeline.make_train_iterator(**kw)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_balance_oversamples_to_the_target(target):
  labels = np.asarray([1] * 85 + [0] * 15, np.int8)
  ex = np.stack([np.arange(100), np.zeros(100, int)], 1)
  ds = source.BalancedEpochs(ex, labels, target, seed=0)
  for epoch in range(2):
    rows = [ds[epoch * len(ds) + j] for j in range(len(ds))]
    got = labels[[r[0] for r in rows]]
    assert abs((got == 0).mean() - target) < 0.01
    assert set(r[0] for r in rows) == set(range(100))  # nothing dropped
  natural = source.BalancedEpochs(ex, labels, None, seed=0)
  assert len(natural) == 100


def test_balance_in_the_pipeline(data_dir):
  it = pipeline.make_train_iterator(
    global_batch_size=16,
    sharding=None,
    seed=0,
    **cfg(data_dir, sampling="picture", balance=0.7, image_size=8),
  )
  labels = np.concatenate([b["label"] for b in take(it, 12)])
  assert abs((labels == 0).mean() - 0.7) < 0.08


def test_real_only_with_sbi(data_dir):
  with pytest.raises(ValueError, match="sbi_prob"):
    pipeline.make_train_iterator(
      global_batch_size=4,
      sharding=None,
      seed=0,
      **cfg(data_dir, real_only=True),
    )
  it = pipeline.make_train_iterator(
    global_batch_size=8,
    sharding=None,
    seed=0,
    **cfg(data_dir, real_only=True, sbi_prob=0.5, sampling="picture"),
  )
  idx = index_lib.load_split_index(data_dir, "train")
  batches = take(it, 4)
  vids = np.concatenate([b["video_idx"] for b in batches])
  assert np.all(idx.video_labels()[vids] == 0)  # only REAL videos are read
  labels = np.concatenate([b["label"] for b in batches])
  assert 0 < labels.mean() < 1  # SBI made some of them FAKE


def test_global_arrays_on_the_data_axis(data_dir):
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec("data")
  )
  it = pipeline.make_train_iterator(
    global_batch_size=8, sharding=sharding, seed=0, **cfg(data_dir)
  )
  b = next(it)
  assert isinstance(b["image"], jax.Array) and b["image"].sharding == sharding
  assert b["image"].shape == (8, 4, SIZE, SIZE, 3)
  state = it.get_state()
  ref = take(it, 2)
  again = pipeline.make_train_iterator(
    global_batch_size=8, sharding=mesh, seed=0, **cfg(data_dir)
  )
  again.set_state(state)
  assert_batches_equal(take(again, 2), ref)
  ev = next(
    pipeline.make_eval_iterator(
      split="val", global_batch_size=8, sharding=sharding, **cfg(data_dir)
    )
  )
  assert (
    ev["_mask"].dtype == jax.numpy.bool_ and ev["_mask"].sharding == sharding
  )


def test_two_workers_give_the_same_batches(data_dir):
  kw = dict(split="val", global_batch_size=4, sharding=None)
  ref = list(pipeline.make_eval_iterator(**kw, **cfg(data_dir)))
  it = pipeline.make_eval_iterator(**kw, **cfg(data_dir, worker_count=2))
  got = list(it)
  it.close()
  assert_batches_equal(got, ref)
  tr = dict(global_batch_size=4, sharding=None, seed=4)
  ref = take(
    pipeline.make_train_iterator(**tr, **cfg(data_dir, augment=True)), 2
  )
  it = pipeline.make_train_iterator(
    **tr, **cfg(data_dir, augment=True, worker_count=2)
  )
  assert_batches_equal(take(it, 2), ref)
  it.close()


def test_bad_config_is_refused(data_dir):
  with pytest.raises(ValueError, match="unknown config.data keys"):
    pipeline.make_train_iterator(
      global_batch_size=4, sharding=None, seed=0, **cfg(data_dir, colour=1)
    )
  with pytest.raises(ValueError, match="multiple of the process count"):
    pipeline.make_eval_iterator(
      split="val",
      global_batch_size=3,
      sharding=None,
      **cfg(data_dir, process_index=0, process_count=2),
    )
