"""Data: TFRecord face shards, the grain input pipeline, augmentation."""
