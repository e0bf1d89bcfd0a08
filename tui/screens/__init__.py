"""Modal screens: help, confirmation, log tail."""
