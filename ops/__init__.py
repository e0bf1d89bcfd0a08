"""ops-pipeline: a supervised, multi-account Alpaca trading pipeline.

Packages by concern, each importing only those below it (docs/architecture.md; the
contracts in .importlinter, checked by `lint-imports`): commands > roles > store |
broker | supervise | notify | strategies > runtime > core. The simulator (ops/sim)
imports nothing else of ops, and nothing in ops imports `textual` or `tui`.
"""

__version__ = "0.1.0"
