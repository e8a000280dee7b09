"""Model files: model-set layout, weights manifest/download/verify, single-file checkpoints, tiny sets."""
