"""Evaluation: task identity and sharding, generation, the judge, activation capture, persona
vectors, judge-endpoint discovery, the live monitor. Never submits jobs.
"""
