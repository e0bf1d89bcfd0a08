"""The `ops` subcommands an operator runs (ops/cli.py parses and dispatches): up/down,
status, doctor, gaps, incidents, signal, pause/resume, positions, sim.
"""
