"""Groups by original, train/val/test splits, and the per-worker partition.

An original and every fake made from it form one group. Groups, never single
videos, are the unit of splitting (so no video, nor any fake made from it,
sits in two splits: the leak of the original ASRID code) and of partitioning
across workers (so a worker that detects faces on an original can reuse its
boxes on the fakes).

This does NOT keep identities apart: on DFDC the same paid actor appears in
many originals (and is a face-swap source or target in fakes of others), so
a person seen in training also appears in val/test. Reported numbers are
therefore for seen identities in new videos, likely optimistic for unseen
people; an identity-disjoint split needs actor labels, which DFDC's
metadata.json does not carry (a CSV `split` column, honoured with
`--splits_from input`, can supply one).
"""

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

from preprocessing.inputs import Issue, VideoItem

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.7, 0.2, 0.1)


@dataclasses.dataclass
class Group:
  """An original (when present) and its fakes; `key` is the original's id."""

  key: str
  original: VideoItem | None
  fakes: list[VideoItem]

  @property
  def videos(self) -> list[VideoItem]:
    """Processing order: the original first (its boxes serve the fakes)."""
    return ([self.original] if self.original else []) + self.fakes

  def __len__(self) -> int:
    return len(self.videos)


def group_videos(
  items: Sequence[VideoItem],
) -> tuple[list[Group], list[Issue]]:
  """Groups by original, sorted by key; notes fakes whose original is absent."""
  by_id = {v.video_id: v for v in items}
  groups: dict[str, Group] = {}
  notes: list[Issue] = []
  for item in sorted(items, key=lambda v: v.video_id):
    if item.original and item.original != item.video_id:
      key = item.original
      group = groups.setdefault(key, Group(key, by_id.get(key), []))
      group.fakes.append(item)
      if key not in by_id:
        notes.append(
          Issue(
            item.video_id,
            f"original {key} is missing: faces detected on the fake itself",
          )
        )
    else:
      group = groups.setdefault(item.video_id, Group(item.video_id, None, []))
      group.original = item
  return [groups[k] for k in sorted(groups)], notes


def _counts(n: int, ratios: Sequence[float]) -> list[int]:
  """Largest-remainder split of n groups; every non-zero ratio gets one
  group when there are enough, so a tiny dataset still has a val and test."""
  r = np.asarray(ratios, np.float64) / np.sum(ratios)
  exact = r * n
  counts = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
    counts[i] += 1
  for i in np.nonzero((counts == 0) & (r > 0))[0]:
    donor = int(np.argmax(counts))
    if counts[donor] > 1:
      counts[donor] -= 1
      counts[i] += 1
  return counts.tolist()


def assign_splits(
  groups: Sequence[Group],
  seed: int = 0,
  ratios: Sequence[float] = DEFAULT_RATIOS,
  honour_given: bool = False,
) -> tuple[dict[str, str], list[Issue]]:
  """Maps every group key to 'train', 'val' or 'test'.

  Args:
    groups: from `group_videos`.
    seed: the shuffle of groups before cutting by `ratios`; same seed and
      same groups -> same splits, whatever the order of `groups`.
    ratios: train, val, test proportions (of groups, not videos).
    honour_given: use the splits given by the input (DFDC metadata 'split',
      a CSV 'split' column). A group takes its original's split (else its
      first fake's); members that disagree are noted. Groups without any
      given split are split by seed as usual.

  Returns:
    key -> split, and notes about conflicting given splits.
  """
  if len(ratios) != len(SPLITS) or min(ratios) < 0 or sum(ratios) <= 0:
    raise ValueError(f"ratios must be 3 non-negative numbers, got {ratios}")
  result: dict[str, str] = {}
  notes: list[Issue] = []
  free: list[str] = []
  for group in groups:
    given = [v.split for v in group.videos if v.split] if honour_given else []
    if not given:
      free.append(group.key)
      continue
    result[group.key] = given[0]
    for v in group.videos:
      if v.split and v.split != given[0]:
        notes.append(
          Issue(
            v.video_id,
            f"given split {v.split!r} overridden by {given[0]!r} of its "
            f"group {group.key} (a group is never split)",
          )
        )
  free.sort()
  order = np.random.default_rng(seed).permutation(len(free))
  start = 0
  for split, count in zip(SPLITS, _counts(len(free), ratios), strict=True):
    for i in order[start : start + count]:
      result[free[i]] = split
    start += count
  return result, notes


def _stable_hash(text: str) -> int:
  return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def partition(
  groups: Sequence[Group], num_workers: int, worker_index: int
) -> list[Group]:
  """The groups worker `worker_index` of `num_workers` processes.

  Deterministic and balanced by video count: groups, largest first (ties by
  a stable hash of the key, so neighbouring names spread out), each go to
  the least-loaded worker. Every worker computes the same assignment from the
  same input, so the parts are disjoint and together complete.
  """
  if num_workers < 1 or not 0 <= worker_index < num_workers:
    raise ValueError(
      f"need 0 <= worker_index < num_workers, got {worker_index}, {num_workers}"
    )
  order = sorted(groups, key=lambda g: (-len(g), _stable_hash(g.key), g.key))
  load = [0] * num_workers
  mine = []
  for group in order:
    worker = min(range(num_workers), key=lambda w: (load[w], w))
    load[worker] += len(group)
    if worker == worker_index:
      mine.append(group)
  return sorted(mine, key=lambda g: g.key)
