"""Data: volume I/O, the dataset spec and its check, the synthetic phantom."""
