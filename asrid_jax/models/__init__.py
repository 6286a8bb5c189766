"""Flax NNX models: MobileNetV3-Small backbone and the ASRID heads."""
