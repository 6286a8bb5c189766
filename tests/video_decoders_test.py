"""The two decoding paths of preprocessing/video.py give the same frames.

"auto" lets PyAV drop the unsampled frames nothing refers to; "opencv"
decodes every frame. Both must give the same frame numbers and bit-identical
pixels on H.264 and HEVC clips with B-frames (encoded here with PyAV's
libx264/libx265), on variable-frame-rate timestamps, and on the real sample
videos; streams whose timestamps cannot give frame numbers use OpenCV.
"""

import fractions

import av
import numpy as np
import pytest

from preprocessing import faces, video


def _encode(
  path,
  codec="libx264",
  n=60,
  vfr=False,
  fmt=None,
  size=(96, 64),
  options=None,
  rotation=None,
  colorspace=None,
  color_range=None,
):
  """A clip of n frames with a moving square; B-frames (some of them
  references with libx264's b-pyramid) and one key frame; optionally a
  display rotation and colour tags (FFmpeg's AVColorSpace/AVColorRange)."""
  width, height = size
  rng = np.random.default_rng(0)
  base = (rng.random((height, width, 3)) * 64 + 96).astype(np.uint8)
  with av.open(str(path), "w", format=fmt, options=options) as container:
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if rotation is not None:
      stream.set_display_rotation(rotation)
    if colorspace is not None:
      stream.codec_context.colorspace = colorspace
    if color_range is not None:
      stream.codec_context.color_range = color_range
    stream.codec_context.gop_size = 250
    if codec == "libx264":
      stream.codec_context.options = {
        "bframes": "3",
        "b-adapt": "0",
        "b-pyramid": "normal",
      }
    else:
      stream.codec_context.options = {"x265-params": "bframes=3:b-adapt=0"}
    stream.codec_context.time_base = fractions.Fraction(1, 1000 if vfr else 25)
    t = 0
    for i in range(n):
      img = base.copy()
      x = (3 * i) % (width - 12)
      img[20:36, x : x + 12] = (255, 40, 40)
      frame = av.VideoFrame.from_ndarray(img, format="rgb24")
      if vfr:  # 40, 47 and 54 ms between frames in turn
        t += 40 + (i % 3) * 7
        frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
      else:
        frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  return path


def _decode(path, step, max_frames, decoder):
  stats = {}
  frames_in = video._decode(path, step, max_frames, stats, decoder)
  head = next(frames_in)
  return head, list(frames_in), stats


def _assert_same(path, step, max_frames, expect="pyav"):
  head_cv, cv, stats_cv = _decode(path, step, max_frames, "opencv")
  head_av, fast, stats_av = _decode(path, step, max_frames, "auto")
  assert stats_cv["decoder"] == "opencv"
  assert stats_av["decoder"] == expect
  assert head_av == head_cv
  assert [i for i, _ in fast] == [i for i, _ in cv]
  for (i, a), (_, b) in zip(fast, cv, strict=True):
    assert a.dtype == np.uint8 and a.shape == b.shape
    assert np.array_equal(a, b), f"frame {i} differs"
  return cv, stats_av


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
@pytest.mark.parametrize(
  "step,max_frames", [(10, 30), (1, 100), (3, 7), (4, 1000), (7, 5)]
)
def test_auto_gives_opencvs_frames(tmp_path, codec, step, max_frames):
  path = _encode(tmp_path / "clip.mp4", codec)
  frames, stats = _assert_same(path, step, max_frames)
  assert [i for i, _ in frames] == list(range(0, 60, step))[:max_frames]


def test_auto_drops_unsampled_frames_nothing_refers_to(tmp_path):
  path = _encode(tmp_path / "clip.mp4")
  _, stats = _assert_same(path, 10, 6)
  # 51 frames read up to the 6th sample (frame 50); x264's non-reference
  # B-frames among them were never decoded.
  assert stats["decoded"] == 51
  assert stats["frames_decoded"] < 0.8 * stats["decoded"]
  _, _, stats_cv = _decode(path, 10, 6, "opencv")
  assert stats_cv["frames_decoded"] == stats_cv["decoded"] == 51


def test_variable_frame_rate_frames_are_numbered_by_rank(tmp_path):
  path = _encode(tmp_path / "vfr.mp4", vfr=True)
  frames, _ = _assert_same(path, 5, 30)
  assert [i for i, _ in frames] == list(range(0, 60, 5))


@pytest.mark.parametrize("colorspace,color_range", [(1, 1), (2, 2), (1, 2)])
def test_colour_tags_give_opencvs_pixels(tmp_path, colorspace, color_range):
  # BT.709 / BT.601-unspecified, limited / full range.
  path = _encode(
    tmp_path / "c.mp4", colorspace=colorspace, color_range=color_range
  )
  _assert_same(path, 4, 10)


@pytest.mark.parametrize("rotation", [90, 180])
def test_rotated_videos_use_opencv(tmp_path, rotation):
  # OpenCV turns the frames upright by the display matrix; PyAV does not.
  path = _encode(tmp_path / "r.mp4", rotation=rotation)
  frames, _ = _assert_same(path, 10, 30, expect="opencv")
  assert frames[0][1].shape[:2] == ((96, 64) if rotation == 90 else (64, 96))


def test_streams_without_timestamps_use_opencv(tmp_path):
  path = _encode(tmp_path / "raw.h264", fmt="h264")
  _assert_same(path, 10, 30, expect="opencv")


def test_reordering_beyond_the_limit_uses_opencv(tmp_path, monkeypatch):
  path = _encode(tmp_path / "clip.mp4")
  # B-frames put decode order up to 2 packets from presentation order.
  monkeypatch.setattr(video, "_REORDER_LIMIT", 2)
  _assert_same(path, 10, 30, expect="opencv")


def test_more_packets_than_memory_allows_use_opencv(tmp_path, monkeypatch):
  path = _encode(tmp_path / "clip.mp4")
  monkeypatch.setattr(video, "_PLAN_BYTES", 2000)
  _assert_same(path, 10, 30, expect="opencv")


def test_other_codecs_and_installs_without_pyav_use_opencv(
  tmp_path, monkeypatch
):
  mpeg4 = tmp_path / "mpeg4.mp4"
  with av.open(str(mpeg4), "w") as container:
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(20):
      img = np.full((48, 64, 3), 10 * i, np.uint8)
      frame = av.VideoFrame.from_ndarray(img, format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  _assert_same(mpeg4, 2, 30, expect="opencv")
  h264 = _encode(tmp_path / "clip.mp4")
  monkeypatch.setattr(video, "av", None)
  _assert_same(h264, 10, 30, expect="opencv")


@pytest.mark.parametrize("index_first", [False, True])
def test_truncated_h264_gives_what_opencv_gives(tmp_path, index_first):
  # With the index (moov) last, a cut file cannot be opened; with it first
  # (faststart), the cut falls inside the media data.
  options = {"movflags": "faststart"} if index_first else None
  path = _encode(tmp_path / "clip.mp4", n=120, size=(160, 96), options=options)
  data = path.read_bytes()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: len(data) * 2 // 3])
  if not index_first:
    for decoder in video.DECODERS:
      with pytest.raises(video.VideoError, match="OpenCV cannot open it"):
        video.read_frames(cut, 5, 30, decoder=decoder)
    return
  cv = video.read_frames(cut, 5, 30, decoder="opencv")
  fast = video.read_frames(cut, 5, 30, decoder="auto")
  assert 3 <= len(cv.frames) < 24
  assert fast.frame_indices == cv.frame_indices
  for a, b in zip(fast.frames, cv.frames, strict=True):
    assert np.array_equal(a, b)


def test_frame_stream_and_settings_pass_the_decoder_on(tmp_path):
  path = _encode(tmp_path / "clip.mp4")
  for decoder in video.DECODERS:
    stream = video.FrameStream(path, 10, 30, 1, decoder)
    got = stream.result()
    assert stream._stats["decoder"] == (
      "pyav" if decoder == "auto" else decoder
    )
    want = video.read_frames(path, 10, 30, decoder="opencv")
    assert got.frame_indices == want.frame_indices
    assert all(
      np.array_equal(a, b) for a, b in zip(got.frames, want.frames, strict=True)
    )
  assert faces.FaceSettings().decoder == "auto"
  assert faces.legacy_settings().decoder == "opencv"
  with pytest.raises(ValueError, match="decoder must be one of"):
    video.read_frames(path, decoder="pyav")


def test_real_sample_videos_give_the_same_frames(real_samples):
  videos = sorted((real_samples / "videos").glob("*.mp4"))
  assert len(videos) == 6
  for path in videos:
    frames, stats = _assert_same(path, 10, 30)
    assert len(frames) >= 11
    if path.stem in ("abofeumbvv", "abqwwspghj"):  # DFDC 1080p H.264
      assert stats["frames_decoded"] < 0.6 * stats["decoded"]
