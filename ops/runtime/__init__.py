"""What every process runs on: the environment and home, loading the config file,
logging and secret redaction, credentials, the daemon lifecycle, the ticker and run
ledger records, retries, failures in words, the demo identity.
"""
