"""ops-pipeline: a supervised, multi-account Alpaca trading pipeline.

The core package. It never imports `textual` or `tui` (the dashboard depends on the core,
never the reverse); tests/test_import_hygiene.py holds it to that.
"""

__version__ = "0.1.0"
