"""Synthetic face-crop shards for tests and benchmarks (no face detector).

Writes DATA_DIR/{train,val,test}/*.tfrecord with `records.ShardWriter` in the
real layout: several videos per shard, records of a video contiguous and in
frame order (then face order), one or more face tracks per video, tracks of
different lengths (some shorter than a typical clip), both labels, and a
dataset_info.json. Each crop is a drawn face (skin ellipse, eyes, nose,
mouth at the stored 5 landmarks) over a textured background that moves a
little frame to frame, so augmentations and SBI have a face to work on.
"""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np

from asrid_jax.data import records


def draw_face(
  size: int, rng: np.random.Generator, shift=(0.0, 0.0), look=None
) -> tuple[np.ndarray, np.ndarray]:
  """(image (size, size, 3) uint8, landmarks (5, 2) float32) of a fake face.

  `look` (a Generator seeded per face track) fixes background and skin, so
  the frames of one track look like one person; `rng` adds sensor noise.
  """
  look = rng if look is None else look
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  phase = look.uniform(0, 2 * np.pi, 3)
  bg = np.stack(
    [
      110 + 60 * np.sin(6 * xx + 4 * yy + p + k * 0.1)
      for k, p in enumerate(phase)
    ],
    -1,
  )
  image = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
  cx, cy = size * (0.5 + shift[0]), size * (0.52 + shift[1])
  s = size / 64.0
  skin = tuple(int(v) for v in look.integers([170, 120, 90], [230, 170, 140]))
  cv2.ellipse(
    image, (int(cx), int(cy)), (int(19 * s), int(25 * s)), 0, 0, 360, skin, -1
  )
  marks = np.asarray(
    [
      [cx - 8 * s, cy - 6 * s],
      [cx + 8 * s, cy - 6 * s],
      [cx, cy + 2 * s],
      [cx - 6 * s, cy + 11 * s],
      [cx + 6 * s, cy + 11 * s],
    ],
    np.float32,
  )
  for x, y in marks[:2]:
    cv2.circle(image, (int(x), int(y)), max(int(3 * s), 1), (40, 30, 30), -1)
  cv2.circle(
    image,
    (int(marks[2, 0]), int(marks[2, 1])),
    max(int(2 * s), 1),
    (150, 90, 80),
    -1,
  )
  cv2.line(
    image,
    (int(marks[3, 0]), int(marks[3, 1])),
    (int(marks[4, 0]), int(marks[4, 1])),
    (120, 40, 50),
    max(int(2 * s), 1),
  )
  return image, marks


def write_synthetic_shards(
  data_dir: os.PathLike | str,
  *,
  videos_per_split: dict[str, int] | None = None,
  videos_per_shard: int = 3,
  frames: tuple[int, int] = (3, 12),
  max_faces: int = 2,
  image_size: int = 48,
  fake_fraction: float = 0.6,
  seed: int = 0,
) -> dict[str, dict[str, int]]:
  """Writes the shards; returns {split: {'records', 'videos', 'real', 'fake'}}.

  Each video has 1..max_faces face tracks; every track has its own number of
  sampled frames in [frames[0], frames[1]] (a face may leave the picture).
  """
  rng = np.random.default_rng(seed)
  videos_per_split = videos_per_split or {"train": 10, "val": 4, "test": 4}
  data_dir = pathlib.Path(data_dir)
  summary: dict[str, dict[str, int]] = {}
  records_by_label: dict[str, list[int]] = {}
  for split, num_videos in videos_per_split.items():
    labels = np.zeros(num_videos, np.int64)
    labels[: max(1, round(fake_fraction * num_videos))] = records.LABEL_FAKE
    labels[-1] = records.LABEL_REAL  # both labels in every split
    rng.shuffle(labels)
    count = 0
    by_label = [0, 0]  # records per label
    for first in range(0, num_videos, videos_per_shard):
      shard = (
        data_dir / split / f"{split}-{first // videos_per_shard:05d}.tfrecord"
      )
      with records.ShardWriter(shard) as writer:
        for v in range(first, min(first + videos_per_shard, num_videos)):
          n = _write_video(
            writer,
            f"{split}/video_{v:03d}.mp4",
            int(labels[v]),
            rng,
            frames,
            max_faces,
            image_size,
          )
          count += n
          by_label[int(labels[v])] += n
    records_by_label[split] = by_label
    summary[split] = {
      "records": count,
      "videos": num_videos,
      "real": int((labels == 0).sum()),
      "fake": int((labels == 1).sum()),
    }
  # dataset_info in extract_faces' layout (counts per split and label), so
  # readers of the training prior see synthetic data like real data.
  splits_info = {
    split: {
      "videos": {"REAL": v["real"], "FAKE": v["fake"]},
      "records": {
        "REAL": records_by_label[split][0],
        "FAKE": records_by_label[split][1],
      },
      "num_videos": v["videos"],
      "num_records": v["records"],
    }
    for split, v in summary.items()
  }
  records.write_dataset_info(
    data_dir, {"synthetic": True, "splits": splits_info, "skipped": []}
  )
  return summary


def _write_video(writer, video_id, label, rng, frames, max_faces, size) -> int:
  num_faces = int(rng.integers(1, max_faces + 1))
  lengths = rng.integers(frames[0], frames[1] + 1, num_faces)
  looks = rng.integers(0, 2**31, num_faces)
  n = 0
  for order in range(int(lengths.max())):
    for face in range(num_faces):
      if order >= lengths[face]:
        continue
      drift = (0.02 * np.sin(order / 2 + face), 0.02 * np.cos(order / 3))
      look = np.random.default_rng(int(looks[face]))
      image, marks = draw_face(size, rng, drift, look)
      rec = records.FaceRecord(
        image=records.encode_jpeg(image, quality=90),
        height=size,
        width=size,
        video_id=video_id,
        original="" if label == records.LABEL_REAL else video_id + ".orig",
        label=label,
        frame_index=10 * order,
        frame_order=order,
        face_index=face,
        box=np.asarray([10, 10, 110, 110], np.float32) + 200 * face,
        landmarks=marks,
        score=0.99,
      )
      writer.write(rec.to_bytes())
      n += 1
  return n
