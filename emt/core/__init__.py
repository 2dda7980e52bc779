"""Bottom layer: configuration, paths, atomic writes, locks, logging, provenance, job records.

Imports nothing else of emt; every other layer may import it.
"""
