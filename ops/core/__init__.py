"""Pure decisions and the domain's vocabulary: models, the configuration schema, risk
gates, exit rules, process verdicts, watchdog policy, drift, fills, ownership,
refusals, incidents' lifecycle. No I/O: nothing here imports asyncio, a database, a
broker, supervisord or the UI (the import contracts in .importlinter hold it to that).
"""
