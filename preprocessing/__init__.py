"""Video -> face-crop shards (PyTorch MTCNN lives here, not in asrid_jax)."""
