"""Keeping processes alive: supervisord's rendered config and XML-RPC client, which
layout runs the processes (supervisord or an orchestrator), and the per-container
health probe `ops health`.
"""
