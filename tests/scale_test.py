"""DFDC-scale behaviour on tiny data: open-file bound, index metadata.

The open-file test runs in a child process whose RLIMIT_NOFILE (soft and
hard, so nothing can raise it back) is set below the number of shards.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from asrid_jax.data import records, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_SHARDS = 200


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("many")
  synthetic.write_synthetic_shards(
    d,
    videos_per_split={"train": NUM_SHARDS, "val": 2},
    videos_per_shard=1,
    frames=(4, 5),
    max_faces=1,
    image_size=16,
    seed=5,
  )
  assert len(records.list_shards(d, "train")) == NUM_SHARDS
  return d


def test_descriptor_pool_is_bounded_and_lru(many_shards, monkeypatch):
  pool = records._DescriptorPool()
  monkeypatch.setattr(records, "DESCRIPTORS", pool)
  pool._reset_after_fork()
  pool._cap = 4
  shards = records.list_shards(many_shards, "train")[:10]
  readers = [records.ShardReader(s) for s in shards]
  want = [list(records.iter_records(s)) for s in shards]
  for _ in range(2):
    for r, w in zip(readers, want, strict=True):
      assert [r[i] for i in range(len(r))] == w
      assert pool.num_open() <= 4
  assert pool.opened == 20  # 10 shards, twice round, never more than 4 open
  # Re-reading the most recent shard reuses its descriptor.
  readers[-1][0]
  assert pool.opened == 20
  # A descriptor in use is not closed by an eviction; its release closes it.
  fd = pool.acquire(str(shards[0]))
  for s in shards[1:6]:
    pool.release(pool.acquire(str(s)))
  assert os.pread(fd, 8, 0)  # still open
  pool.release(fd)
  assert pool.num_open() <= 4
  with pytest.raises(OSError):
    os.fstat(fd)


_CHILD = textwrap.dedent(
  """
  import os, resource, sys
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  from asrid_jax.data import pipeline, records

  data_dir, num_shards = sys.argv[1], int(sys.argv[2])
  in_use = len(os.listdir("/proc/self/fd"))
  limit = in_use + 140
  assert limit < num_shards, (limit, num_shards)
  resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
  cfg = dict(dir=data_dir, image_size=16, clip_len=2, read_threads=2,
             worker_count=1, augment=False)
  it = pipeline.make_train_iterator(
      split="train", global_batch_size=8, sharding=None, seed=0, **cfg)
  seen = set()
  ids = pipeline.video_ids(data_dir, "train")
  for _ in range(40):
    seen.update(ids[v] for v in next(it)["video_idx"])
  it.close()
  cfg["worker_count"] = 0
  n = 0
  for b in pipeline.make_eval_iterator(
      split="train", global_batch_size=8, sharding=None, **cfg):
    n += int(b["_mask"].sum())
  print("OK", limit, len(seen), n, records.DESCRIPTORS.cap)
  """
)


def test_training_input_with_fewer_descriptors_than_shards(many_shards):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD, str(many_shards), str(NUM_SHARDS)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ok, limit, videos, clips, cap = proc.stdout.split()[-5:]
  assert ok == "OK" and int(limit) < NUM_SHARDS
  assert int(videos) > int(limit)  # batches came from more shards than fds
  assert int(clips) >= NUM_SHARDS  # the eval pass read every shard
  assert int(cap) <= int(limit) // 4


def test_metadata_is_written_with_the_shard_and_survives_a_copy(
  many_shards, tmp_path, monkeypatch
):
  from asrid_jax.data import index as index_lib

  shards = records.list_shards(many_shards, "val")
  for s in shards:  # written by ShardWriter itself, no index pass needed
    assert records.meta_path(s).is_file()

  def no_scan(shard):
    raise AssertionError(f"parsed the records of {shard}")

  monkeypatch.setattr(index_lib, "_scan_shard", no_scan)
  # A copy with new mtimes (cp without -p, gsutil, staging to local SSD),
  # then made read-only: start-up still reads no record.
  copy = tmp_path / "copy"
  shutil.copytree(many_shards, copy, copy_function=shutil.copyfile)
  for p in (copy / "val").iterdir():
    p.chmod(0o444)
  (copy / "val").chmod(0o555)
  try:
    idx = index_lib.load_split_index(copy, "val")
  finally:
    (copy / "val").chmod(0o755)
  truth = [
    records.FaceRecord.from_bytes(d)
    for s in shards
    for d in records.iter_records(s)
  ]
  assert idx.num_records == len(truth)
  np.testing.assert_array_equal(idx.frame_order, [r.frame_order for r in truth])
  np.testing.assert_array_equal(idx.label, [r.label for r in truth])


def test_old_metadata_is_rebuilt_once(many_shards, tmp_path, monkeypatch):
  from asrid_jax.data import index as index_lib

  d = tmp_path / "old"
  shutil.copytree(many_shards / "val", d / "val")
  shard = records.list_shards(d, "val")[0]
  path = records.meta_path(shard)
  with np.load(path) as z:
    old = {k: z[k] for k in z.files}
  old["signature"] = np.asarray([1, 1, 0, 0, 0, 0], np.int64)  # version 1
  with open(path, "wb") as f:
    np.savez(f, **old)
  scans = []
  real_scan = index_lib._scan_shard
  monkeypatch.setattr(
    index_lib, "_scan_shard", lambda s: scans.append(s) or real_scan(s)
  )
  index_lib.load_split_index(d, "val")
  assert scans == [shard]
  index_lib._CACHE.clear()
  index_lib.load_split_index(d, "val")
  assert scans == [shard]  # rewritten with the current signature
