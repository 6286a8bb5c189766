"""Input pipeline: face-crop shards -> sharded global batches (grain).

Graph (grain's recommended order):

    examples of this process ([process_index::process_count])
      -> train: BalancedEpochs -> shuffle(seed) -> repeat()   (new order each
         epoch) | eval: padded to whole batches, in order, one pass
      -> random_map(LoadExample)   read (pread, crc) + decode + resize
      -> random_map(Augment)       train only, per-record RNG
      -> map(ToBatchFields) -> batch(per-process batch, drop_remainder)
      -> to_iter_dataset(read threads) -> mp_prefetch(worker_count)
      -> global jax.Arrays on the mesh 'data' axis (in a prefetch thread)

Batch layout (CONTRACTS.md): image uint8 (B, T, H, W, 3), label int32 (B,),
video_idx int32 (B,), face_index int32 (B,), frame_order int32 (B, T) with -1
on repeated (padding) frames, and at evaluation `_mask` bool (B,), False on
padding rows. The returned iterators are grain DatasetIterators: their
`get_state()`/`set_state()` (and `grain.checkpoint.CheckpointSave`) resume
mid-epoch with exactly the same examples.

Every record (picture sampling) or every clip (video sampling: the
non-overlapping clips covering each track) of a split is evaluated exactly
once over all processes; each process's part is padded to the same number of
batches so multi-host steps stay in lock step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import jax
import numpy as np
from absl import flags, logging

from asrid_jax.data import augment as augment_lib
from asrid_jax.data import index as index_lib
from asrid_jax.data import source as source_lib

# Re-exported: the eval stream reads the video-id table and label counts here.
video_ids = index_lib.video_ids
label_counts = index_lib.label_counts


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """config.data, with defaults for the keys a config may leave out.

  `balance`: 'natural' or the target REAL fraction of training examples (the
  under-represented class is oversampled). `real_only`: train on REAL
  examples only, SBI pseudo-fakes (probability `sbi_prob`) being the FAKEs.
  `short_tracks`: 'pad' (repeat the last frame) or 'skip' for tracks shorter
  than clip_len. `process_index`/`process_count`: None = jax's; set them to
  simulate hosts in tests.
  """

  dir: str = "demo_out/shards"
  image_size: int = 380
  sampling: str = "video"
  clip_len: int = 8
  balance: str | float = "natural"
  worker_count: int = 0
  prefetch: int = 2
  read_threads: int = 2
  augment: Any = None
  sbi_prob: float = 0.0
  real_only: bool = False
  short_tracks: str = "pad"
  device_prefetch: int = 2
  process_index: int | None = None
  process_count: int | None = None

  @classmethod
  def create(cls, **data_config) -> DataConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data_config) - names)
    if unknown:
      raise ValueError(
        f"unknown config.data keys {unknown}; known: {sorted(names)}"
      )
    cfg = cls(**data_config)
    if cfg.sampling not in ("picture", "video"):
      raise ValueError(
        f"data.sampling: 'picture' or 'video', not {cfg.sampling!r}"
      )
    if cfg.balance != "natural" and not (
      isinstance(cfg.balance, int | float) and 0 < cfg.balance < 1
    ):
      raise ValueError(
        f"data.balance: 'natural' or a REAL fraction in (0, 1), got "
        f"{cfg.balance!r}"
      )
    if not 0.0 <= cfg.sbi_prob <= 1.0:
      raise ValueError(f"data.sbi_prob must be in [0, 1], got {cfg.sbi_prob}")
    if cfg.real_only and cfg.sbi_prob <= 0.0:
      raise ValueError("data.real_only needs data.sbi_prob > 0 (no FAKEs)")
    if cfg.real_only and cfg.balance != "natural":
      raise ValueError(
        "data.real_only: the FAKE fraction is data.sbi_prob; "
        "data.balance must be 'natural'"
      )
    for key in ("image_size", "clip_len", "prefetch", "read_threads"):
      if getattr(cfg, key) < 1:
        raise ValueError(f"data.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.worker_count < 0:
      raise ValueError(
        f"data.worker_count must be >= 0, got {cfg.worker_count}"
      )
    return cfg

  @property
  def clip_frames(self) -> int:
    return 1 if self.sampling == "picture" else self.clip_len

  def processes(self) -> tuple[int, int]:
    if self.process_index is None or self.process_count is None:
      return jax.process_index(), jax.process_count()
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(
        f"process_index {self.process_index} not in [0, {self.process_count})"
      )
    return self.process_index, self.process_count


def _derive_seed(*parts: int) -> int:
  """A 32-bit seed from several ints (grain's shuffle takes < 2**32)."""
  return int(
    np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]
  )


def _local_batch_size(global_batch_size: int, count: int) -> int:
  if global_batch_size < 1 or global_batch_size % count:
    raise ValueError(
      f"global_batch_size {global_batch_size} must be a positive multiple "
      f"of the process count {count}"
    )
  return global_batch_size // count


def _ensure_flags_parsed() -> None:
  """grain reads absl flags when it starts workers; outside absl.app.run they
  are unparsed and raise UnparsedFlagAccessError, so accept the defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _finish(
  ds: grain.MapDataset, cfg: DataConfig, local_batch: int, sharding
) -> grain.DatasetIterator:
  ds = ds.map(source_lib.ToBatchFields()).batch(
    local_batch, drop_remainder=True
  )
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch
    )
  )
  if cfg.worker_count > 0:
    _ensure_flags_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=cfg.worker_count, per_worker_buffer_size=cfg.prefetch
      )
    )
  if sharding is not None:
    it_ds = _to_global(it_ds, sharding, cfg.device_prefetch)
  return iter(it_ds)


def _to_global(ds: grain.IterDataset, sharding, buffer: int):
  """Process-local numpy batches -> global jax.Arrays, built ahead in a
  thread (grain.experimental.device_put does the same with jax.device_put,
  which cannot assemble an array spanning several hosts)."""
  if isinstance(sharding, jax.sharding.Mesh):
    sharding = jax.sharding.NamedSharding(
      sharding, jax.sharding.PartitionSpec("data")
    )

  def put(batch):
    return {
      k: jax.make_array_from_process_local_data(sharding, v)
      for k, v in batch.items()
    }

  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=2)
  ds = ds.map(put)
  return grain.experimental.ThreadPrefetchIterDataset(
    ds, prefetch_buffer_size=buffer
  )


def _examples(cfg: DataConfig, split: str):
  index = index_lib.load_split_index(cfg.dir, split)
  examples, labels = source_lib.make_examples(
    index, cfg.sampling, cfg.clip_len, cfg.short_tracks
  )
  if not len(examples):
    raise ValueError(
      f"{cfg.dir}/{split}: no examples (all tracks shorter than clip_len="
      f"{cfg.clip_len} with short_tracks='skip'?)"
    )
  return index, examples, labels


def make_train_iterator(
  *,
  split: str = "train",
  global_batch_size: int,
  sharding,
  seed: int,
  **data_config,
) -> grain.DatasetIterator:
  """An endless, per-epoch reshuffled, augmented iterator of batches.

  Args:
    split: folder under data_config['dir'].
    global_batch_size: examples (clips) per step over all processes.
    sharding: a jax Sharding (or Mesh: 'data' axis) for global arrays; None
      yields this process's numpy batches.
    seed: drives order, balance resampling, clip starts and augmentation.
    **data_config: config.data (see DataConfig).
  """
  cfg = DataConfig.create(**data_config)
  p, count = cfg.processes()
  local = _local_batch_size(global_batch_size, count)
  index, examples, labels = _examples(cfg, split)
  if cfg.real_only:
    keep = labels == 0
    examples, labels = examples[keep], labels[keep]
  examples, labels = examples[p::count], labels[p::count]
  if len(examples) < local:
    raise ValueError(
      f"{cfg.dir}/{split}: process {p} has {len(examples)} examples, fewer "
      f"than its batch of {local}"
    )
  real_fraction = None if cfg.balance == "natural" else float(cfg.balance)
  base = _derive_seed(seed, p)
  ds = source_lib.BalancedEpochs(
    examples, labels, real_fraction, _derive_seed(base, 1)
  )
  logging.info(
    "train %s/%s: process %d/%d, %d examples an epoch (%s sampling)",
    cfg.dir,
    split,
    p,
    count,
    len(ds),
    cfg.sampling,
  )
  ds = ds.shuffle(_derive_seed(base, 2)).repeat(None)
  ds = ds.random_map(
    source_lib.LoadExample(
      index,
      sampling=cfg.sampling,
      clip_len=cfg.clip_len,
      image_size=cfg.image_size,
      random_start=True,
      with_mask=False,
    ),
    seed=_derive_seed(base, 3),
  )
  aug = augment_lib.Augment.from_config(cfg.augment, sbi_prob=cfg.sbi_prob)
  if aug is not None:
    ds = ds.random_map(aug, seed=_derive_seed(base, 4))
  return _finish(ds, cfg, local, sharding)


def subset_videos(index, max_videos: int) -> np.ndarray:
  """A fixed, label-stratified subset of at most `max_videos` video_idx.

  Each label keeps its share of the split (at least one video when it has
  any); within a label the videos with the smallest CRC-32C of their id are
  taken, so the subset is the same in every run and on every host, and
  mostly the same when videos are added.
  """
  import google_crc32c  # pylint: disable=g-import-not-at-top

  labels = index.video_labels()
  n = len(labels)
  if max_videos <= 0 or max_videos >= n:
    return np.arange(n)
  keys = np.asarray(
    [google_crc32c.value(v.encode("utf-8")) for v in index.video_ids],
    np.int64,
  )
  chosen = []
  for label in (0, 1):
    members = np.flatnonzero(labels == label)
    if not len(members):
      continue
    k = max(1, int(round(max_videos * len(members) / n)))
    chosen.append(members[np.argsort(keys[members], kind="stable")[:k]])
  return np.sort(np.concatenate(chosen))


def _eval_plan(
  cfg: DataConfig, split: str, global_batch_size: int, max_videos: int = 0
):
  p, count = cfg.processes()
  local = _local_batch_size(global_batch_size, count)
  index, examples, _ = _examples(cfg, split)
  if max_videos > 0:
    keep = np.zeros(len(index.video_ids), bool)
    keep[subset_videos(index, max_videos)] = True
    if cfg.sampling == "picture":
      video_of = index.video[examples[:, 0]]
    else:
      video_of = index.track_video[examples[:, 0]]
    examples = examples[keep[video_of]]
  # Every process runs the same number of batches (lock-step steps).
  num_batches = max(1, math.ceil(math.ceil(len(examples) / count) / local))
  part = examples[p::count]
  padded = np.full((num_batches * local, 2), -1, np.int64)
  padded[: len(part)] = part
  return index, padded, local, num_batches


def eval_num_batches(
  *, split: str, global_batch_size: int, max_videos: int = 0, **data_config
) -> int:
  """How many batches `make_eval_iterator` yields (for progress bars)."""
  cfg = DataConfig.create(**data_config)
  return _eval_plan(cfg, split, global_batch_size, max_videos)[3]


def make_eval_iterator(
  *,
  split: str,
  global_batch_size: int,
  sharding,
  max_videos: int = 0,
  **data_config,
) -> grain.DatasetIterator:
  """One ordered pass over a split, no augmentation, last batch padded.

  Rows with `_mask` False are padding (zeros, video_idx -1). Arguments as in
  `make_train_iterator`; augment / sbi_prob / balance / real_only are ignored.
  `max_videos` > 0 limits the pass to `subset_videos` (periodic validation
  during training; full passes are for `evaluate`).
  """
  cfg = DataConfig.create(**data_config)
  index, padded, local, num_batches = _eval_plan(
    cfg, split, global_batch_size, max_videos
  )
  logging.info(
    "eval %s/%s: %d batches of %d per process",
    cfg.dir,
    split,
    num_batches,
    local,
  )
  ds = grain.MapDataset.source(padded).random_map(
    source_lib.LoadExample(
      index,
      sampling=cfg.sampling,
      clip_len=cfg.clip_len,
      image_size=cfg.image_size,
      random_start=False,
      with_mask=True,
    ),
    seed=0,  # unused: no randomness at evaluation
  )
  return _finish(ds, cfg, local, sharding)
