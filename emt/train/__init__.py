"""Training: the run, its callbacks, checkpoint locking and resume, distributed ranks."""
