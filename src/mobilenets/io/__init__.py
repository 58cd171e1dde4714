"""Files in and out: checkpoints, weight conversion, the artifact loader."""
