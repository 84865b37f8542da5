"""WebDataset shards: the sample format (format.py), the writer and the reader."""
