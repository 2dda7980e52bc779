"""The HTML report and its figures, built from scores.h5 files."""
