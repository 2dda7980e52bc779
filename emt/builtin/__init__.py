"""Everything a config names ``builtin:*``: the tiny model, the organism, the offline judges, the
synthetic datasets and the project's trait files. Imports only emt.core and emt.analysis.
"""
