"""The only layer that imports submitit: executors and the callables jobs run."""
