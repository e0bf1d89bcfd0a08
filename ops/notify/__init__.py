"""Telling people: the alert outbox and its sinks, the Prometheus metrics.
"""
