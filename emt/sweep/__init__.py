"""Runs and their identity (name, hash, seed), dataset reading and checks."""
