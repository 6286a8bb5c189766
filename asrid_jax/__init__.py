"""ASRID-JAX: Attention-based Suspicious Region In-consistency Detector in JAX."""
