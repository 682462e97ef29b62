"""Data path: raw text sources, packing into L-token blocks, shard writers and the training loader."""
