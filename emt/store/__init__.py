"""On-disk formats of results: the per-checkpoint result file, scores.h5, activation files."""
