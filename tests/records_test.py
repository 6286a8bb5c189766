"""TFRecord face shards: framing, schema round trip, atomicity, corruption."""

import json
import os
import pathlib
import pickle
import struct

import numpy as np
import pytest

from asrid_jax.data import records

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def make_record(i: int = 0, label: int = records.LABEL_FAKE, size: int = 16):
  rng = np.random.default_rng(i)
  image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  return records.FaceRecord(
    image=records.encode_jpeg(image, quality=90),
    height=size,
    width=size,
    video_id=f"part_0/vid é {i}.mp4",
    original="part_0/orig.mp4" if label else "",
    label=label,
    frame_index=10 * i,
    frame_order=i,
    face_index=i % 2,
    box=np.array([1.5, 2.25, 100.0, 120.75]) + i,
    landmarks=np.arange(10, dtype=np.float32).reshape(5, 2) * 1.5 + i,
    score=0.99 - 0.01 * i,
  )


def write_shard(path, recs):
  with records.ShardWriter(path) as w:
    for r in recs:
      w.write(r.to_bytes())
  return path


def test_masked_crc32c_known_value():
  # The masked CRC of the 8-byte little-endian length 0 as TensorFlow writes
  # it (see the TF fixture below for a full-file check).
  crc = records.masked_crc32c(struct.pack("<Q", 0))
  assert crc == records.masked_crc32c(b"\x00" * 8)
  assert 0 <= crc < 2**32
  # Unmasked CRC-32C check value of "123456789" is 0xE3069283; masking is
  # rotate-right-15 plus 0xa282ead8.
  raw = 0xE3069283
  expected = (((raw >> 15) | (raw << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert records.masked_crc32c(b"123456789") == expected


def test_every_field_round_trips():
  rec = make_record(3)
  back = records.FaceRecord.from_bytes(rec.to_bytes())
  assert back == rec
  for field in (
    "height",
    "width",
    "video_id",
    "original",
    "label",
    "frame_index",
    "frame_order",
    "face_index",
  ):
    assert getattr(back, field) == getattr(rec, field), field
  assert back.image == rec.image
  assert back.box.dtype == np.float32 and back.box.shape == (4,)
  np.testing.assert_array_equal(back.box, rec.box)
  assert back.landmarks.shape == (5, 2)
  np.testing.assert_array_equal(back.landmarks, rec.landmarks)
  assert back.score == pytest.approx(rec.score, rel=1e-6)
  assert back.video_id == "part_0/vid é 3.mp4"
  img = back.decode_image()
  assert img.shape == (16, 16, 3) and img.dtype == np.uint8


def test_missing_field_is_named():
  from tensorflow_datasets.proto import tf_example_pb2

  ex = tf_example_pb2.Example.FromString(make_record().to_bytes())
  del ex.features.feature["face/box"]
  with pytest.raises(ValueError, match="face/box"):
    records.FaceRecord.from_bytes(ex.SerializeToString())


def test_bad_label_refused():
  with pytest.raises(ValueError, match="label"):
    make_record(label=2)


def test_shard_write_read_random_and_sequential(tmp_path):
  recs = [make_record(i, label=i % 2) for i in range(7)]
  path = write_shard(tmp_path / "train" / "s-00000.tfrecord", recs)
  idx = records.read_index(path)
  assert idx.shape == (7, 2) and idx.dtype == np.dtype("<u8")
  reader = records.ShardReader(path)
  assert len(reader) == 7
  for i in (6, 0, 3):
    assert records.FaceRecord.from_bytes(reader[i]) == recs[i]
  seq = [records.FaceRecord.from_bytes(b) for b in records.iter_records(path)]
  assert seq == recs
  assert records.list_shards(tmp_path, "train") == [path]
  assert records.list_shards(tmp_path, "val") == []


def test_reader_pickles_without_fd(tmp_path):
  path = write_shard(tmp_path / "a.tfrecord", [make_record(0)])
  reader = records.ShardReader(path)
  _ = reader[0]
  blob = pickle.dumps(reader)
  # No descriptor travels: the reader holds only its path and index.
  assert not any(type(v) is int for v in vars(reader).values())
  clone = pickle.loads(blob)
  assert clone[0] == reader[0]


def test_failed_write_leaves_nothing(tmp_path):
  path = tmp_path / "s.tfrecord"
  with pytest.raises(RuntimeError):
    with records.ShardWriter(path) as w:
      w.write(make_record(0).to_bytes())
      raise RuntimeError("killed")
  assert list(tmp_path.iterdir()) == []


def test_unfinished_write_is_invisible(tmp_path):
  w = records.ShardWriter(tmp_path / "s.tfrecord")
  w.write(make_record(0).to_bytes())
  # Before close() only temporary names exist; list_shards ignores them.
  assert records.list_shards(tmp_path, ".") == []
  assert not (tmp_path / "s.tfrecord").exists()
  w.close()
  assert (tmp_path / "s.tfrecord").exists()
  assert (tmp_path / "s.tfrecord.idx").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "s.tfrecord",
    "s.tfrecord.idx",
    "s.tfrecord.meta.npz",
  ]
  # The metadata written with the shard lists its record, and is current.
  with np.load(tmp_path / "s.tfrecord.meta.npz") as z:
    assert np.array_equal(
      z["signature"], records.content_signature(tmp_path / "s.tfrecord")
    )
    assert z["video_ids"].tolist() == [make_record(0).video_id]
    assert z["frame_order"].tolist() == [make_record(0).frame_order]


def _flip_byte(path, pos):
  raw = bytearray(path.read_bytes())
  raw[pos] ^= 0xFF
  path.write_bytes(bytes(raw))


def test_corrupt_data_names_file_and_offset(tmp_path):
  recs = [make_record(i) for i in range(3)]
  path = write_shard(tmp_path / "s.tfrecord", recs)
  idx = records.read_index(path)
  second_start = int(idx[1, 0]) - 12
  _flip_byte(path, int(idx[1, 0]) + 5)  # inside record 1's data
  reader = records.ShardReader(path)
  assert records.FaceRecord.from_bytes(reader[0]) == recs[0]
  with pytest.raises(records.CorruptRecordError) as e:
    reader[1]
  assert e.value.offset == second_start
  assert str(path) in str(e.value) and "data checksum" in str(e.value)
  with pytest.raises(records.CorruptRecordError, match=f"byte {second_start}"):
    list(records.iter_records(path))
  # verify=False reads the damaged bytes without complaint.
  assert len(records.ShardReader(path, verify=False)[1]) == int(idx[1, 1])


def test_corrupt_length_and_truncation(tmp_path):
  path = write_shard(tmp_path / "s.tfrecord", [make_record(0), make_record(1)])
  size = path.stat().st_size
  bad = tmp_path / "len.tfrecord"
  bad.write_bytes(path.read_bytes())
  _flip_byte(bad, 9)  # the length's checksum of record 0
  with pytest.raises(records.CorruptRecordError, match="length checksum"):
    next(records.iter_records(bad))
  cut = tmp_path / "cut.tfrecord"
  cut.write_bytes(path.read_bytes()[: size - 7])
  (tmp_path / "cut.tfrecord.idx").write_bytes(
    (tmp_path / "s.tfrecord.idx").read_bytes()
  )
  with pytest.raises(records.CorruptRecordError, match="file ends"):
    list(records.iter_records(cut))
  with pytest.raises(records.CorruptRecordError, match="file ends"):
    records.ShardReader(cut)[1]


def test_missing_or_bad_index(tmp_path):
  path = write_shard(tmp_path / "s.tfrecord", [make_record(0)])
  os.remove(str(path) + ".idx")
  with pytest.raises(FileNotFoundError, match="index missing"):
    records.ShardReader(path)
  (tmp_path / "s.tfrecord.idx").write_bytes(b"123")
  with pytest.raises(ValueError, match="multiple of 16"):
    records.read_index(path)


def test_dataset_info_round_trip_and_checks(tmp_path):
  records.write_dataset_info(tmp_path, {"counts": {"train": {"FAKE": 3}}})
  info = records.read_dataset_info(tmp_path)
  assert info["schema_version"] == records.SCHEMA_VERSION
  assert info["counts"] == {"train": {"FAKE": 3}}
  assert [p.name for p in tmp_path.iterdir()] == ["dataset_info.json"]
  (tmp_path / "dataset_info.json").write_text(json.dumps({"schema_version": 0}))
  with pytest.raises(ValueError, match="schema_version 0"):
    records.read_dataset_info(tmp_path)
  (tmp_path / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    records.read_dataset_info(tmp_path)
  with pytest.raises(FileNotFoundError, match="extract_faces"):
    records.read_dataset_info(tmp_path / "nowhere")


# -- TensorFlow compatibility --------------------------------------------------
# tests/fixtures/make_tf_fixture.py was run once with tensorflow-cpu 2.21: it
# wrote tf_written.tfrecord with tf.io.TFRecordWriter (an Example built by
# TensorFlow from the values in tf_expected.json), and read our_written.tfrecord
# (written by this module) with tf.data.TFRecordDataset + parse_single_example,
# storing what TensorFlow parsed in tf_parsed_ours.json.


def _fixture_record() -> records.FaceRecord:
  spec = json.loads((FIXTURES / "tf_expected.json").read_text())
  spec["image"] = bytes.fromhex(spec["image"])
  return records.FaceRecord(**spec)


def test_reads_tensorflow_written_file():
  path = FIXTURES / "tf_written.tfrecord"
  (data,) = list(records.iter_records(path, verify=True))
  assert records.FaceRecord.from_bytes(data) == _fixture_record()


def test_framing_is_byte_identical_to_tensorflow(tmp_path):
  tf_file = FIXTURES / "tf_written.tfrecord"
  (payload,) = list(records.iter_records(tf_file))
  ours = tmp_path / "x.tfrecord"
  with records.ShardWriter(ours) as w:
    w.write(payload)
  assert ours.read_bytes() == tf_file.read_bytes()


def test_tensorflow_parsed_our_file():
  ours = FIXTURES / "our_written.tfrecord"
  (data,) = list(records.iter_records(ours))
  rec = records.FaceRecord.from_bytes(data)
  # The fixture file is what this module writes today for the same record.
  assert data == _fixture_record().to_bytes()
  parsed = json.loads((FIXTURES / "tf_parsed_ours.json").read_text())
  assert bytes.fromhex(parsed["image/encoded"]) == rec.image
  assert parsed["video/id"] == rec.video_id
  assert parsed["video/original"] == rec.original
  for name, attr in [
    ("image/height", "height"),
    ("image/width", "width"),
    ("video/label", "label"),
    ("frame/index", "frame_index"),
    ("frame/order", "frame_order"),
    ("face/index", "face_index"),
  ]:
    assert parsed[name] == getattr(rec, attr), name
  np.testing.assert_allclose(parsed["face/box"], rec.box, rtol=0)
  np.testing.assert_allclose(
    np.reshape(parsed["face/landmarks"], (5, 2)), rec.landmarks, rtol=0
  )
  assert parsed["face/score"] == pytest.approx(rec.score, rel=1e-7)
