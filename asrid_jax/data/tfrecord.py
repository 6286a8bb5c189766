"""TFRecord framing: length, masked CRC-32C of the length, data, its CRC."""

import struct

import google_crc32c

HEADER = struct.Struct("<QI")  # length, masked crc of the length
FOOTER = struct.Struct("<I")  # masked crc of the data
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
  """The CRC-32C that TFRecord stores: rotated right by 15 plus a constant."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = struct.pack("<Q", len(data))
  return (
    length
    + struct.pack("<I", masked_crc32c(length))
    + data
    + FOOTER.pack(masked_crc32c(data))
  )
