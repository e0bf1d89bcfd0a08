"""The dashboard's widgets, one per file (banner, accounts, positions, processes,
incidents, feed) and the keyed-table base they share."""
