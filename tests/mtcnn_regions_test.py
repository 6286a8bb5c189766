"""MTCNN's own pieces (preprocessing/detect.py, mtcnn_regions.py): the
separable max pool and the summed-area pyramid bit for bit torch's, whole
frames exactly as facenet-pytorch finds them, regions giving the whole
frame's boxes, and torch's threads beside a decoding stream.
"""

import numpy as np
import pytest

from preprocessing import detect, mtcnn_regions


def test_separable_pool_is_torch_max_pool_exactly():
  torch = pytest.importorskip("torch")
  pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
  gen = torch.Generator().manual_seed(0)
  for shape in [(2, 3, 24, 24), (1, 28, 22, 21), (5, 4, 9, 10), (1, 1, 3, 3)]:
    x = torch.randn(shape, generator=gen)
    assert torch.equal(detect.separable_max_pool_3x3(x), pool(x)), shape


def test_area_resize_is_torch_area_interpolation_bit_for_bit():
  torch = pytest.importorskip("torch")
  from torch.nn.functional import interpolate

  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 121, 203, 3), dtype=np.uint8)
  size = frames.shape[1:3]
  # What detect_face resizes: the frames as float, NCHW, channels last.
  floats = torch.as_tensor(frames).permute(0, 3, 1, 2).type(torch.float32)
  table = mtcnn_regions.summed_area(frames, 0, 0, *size)
  sizes = [
    (int(size[0] * s + 1), int(size[1] * s + 1))
    for s in mtcnn_regions.pyramid_scales(*size, 12, 0.709)
  ] + [(24, 24), (121, 203), (60, 101)]
  for out in sizes:
    want = interpolate(floats, size=out, mode="area").permute(0, 2, 3, 1)
    got = mtcnn_regions.area_resize(
      table, (0, 0), size, out, (0, out[0]), (0, out[1])
    )
    assert torch.equal(torch.from_numpy(got), want), out
    # A window, from the table of a crop around its input pixels.
    rows, cols = (out[0] // 3, out[0] // 2 + 1), (out[1] // 4, out[1] - 1)
    y0 = mtcnn_regions.area_windows(size[0], out[0], *rows)[0][0]
    x0 = mtcnn_regions.area_windows(size[1], out[1], *cols)[0][0]
    crop = mtcnn_regions.summed_area(frames, y0, x0, *size)
    part = mtcnn_regions.area_resize(crop, (y0, x0), size, out, rows, cols)
    assert torch.equal(
      torch.from_numpy(part), want[:, rows[0] : rows[1], cols[0] : cols[1]]
    ), out


def _sample_frames(tmp_path):
  """Every 2nd frame of a synthetic 8-frame clip with one face."""
  from preprocessing import make_sample, video

  part = make_sample.make_sample(
    tmp_path,
    make_sample.SampleSettings(num_originals=1, fakes_per_original=0, frames=8),
    progress=False,
  )
  (path,) = sorted(part.glob("*.mp4"))
  return video.read_frames(path, frame_step=2).frames


def test_mtcnn_whole_frames_match_the_library_exactly(tmp_path, monkeypatch):
  import contextlib

  frames = _sample_frames(tmp_path)
  detector = detect.MTCNNDetector()
  ours = detector.detect(frames)
  # facenet-pytorch building its own pyramid with imresample.
  monkeypatch.setattr(
    mtcnn_regions, "exact_pyramid", lambda *a: contextlib.nullcontext()
  )
  library = detector.detect(frames)
  assert sum(len(d) for d in ours) >= len(frames)
  for a, b in zip(ours, library, strict=True):
    assert np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.landmarks, b.landmarks)


def test_mtcnn_regions_give_the_whole_frame_boxes(tmp_path):
  frames = _sample_frames(tmp_path)
  detector = detect.MTCNNDetector()
  whole = detector.detect(frames)
  box = whole[0].boxes[0]
  grow = 0.5 * float(box[3] - box[1])
  region = tuple(int(v) for v in (*(box[:2] - grow), *(box[2:] + grow)))
  cropped = detector.detect(frames, regions=[region])
  for a, b in zip(whole, cropped, strict=True):
    inside = [
      i
      for i, bx in enumerate(a.boxes)
      if region[0] <= (bx[0] + bx[2]) / 2 < region[2]
      and region[1] <= (bx[1] + bx[3]) / 2 < region[3]
    ]
    assert len(b) == len(inside) >= 1
    np.testing.assert_allclose(b.boxes, a.boxes[inside], atol=0.05)
    np.testing.assert_allclose(b.scores, a.scores[inside], atol=1e-4)
  # Nothing is found outside the regions.
  empty = detector.detect(frames[:1], regions=[(0, 0, 8, 8)])
  assert len(empty[0]) == 0


def test_mtcnn_leaves_a_core_to_the_decoder_while_it_decodes(monkeypatch):
  torch = pytest.importorskip("torch")
  detector = detect.MTCNNDetector()
  seen = []

  def fake_detect(frames, landmarks):
    seen.append(torch.get_num_threads())
    return [None] * len(frames), [None] * len(frames), [None] * len(frames)

  monkeypatch.setattr(detector._mtcnn, "detect", fake_detect)
  frame = np.zeros((48, 64, 3), np.uint8)
  given = torch.get_num_threads()
  try:
    for threads, want in ((3, [2, 3]), (1, [1, 1])):
      torch.set_num_threads(threads)
      busy, seen[:] = [True], []
      with detector.sharing_cpu(lambda b=busy: b[0]):
        detector.detect([frame])  # decoding: one thread fewer
        busy[0] = False
        detector.detect([frame])  # decoding done: all of them
      assert seen == want and torch.get_num_threads() == threads
      detector.detect([frame])  # outside: untouched
      assert seen[-1] == threads
  finally:
    torch.set_num_threads(given)
