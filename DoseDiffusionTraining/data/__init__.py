"""Training data: the compact case format and datasets."""
