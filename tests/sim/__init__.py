"""Tests of the bundled Alpaca-compatible simulator (ops/sim), with real alpaca-py clients."""
