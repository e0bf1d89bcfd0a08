"""The dashboard's widgets, one per file (banner, accounts, positions, processes,
incidents, feed, footer) and their two table bases: KeyedTable (a DataTable updated by
row key, for the small tables) and VirtualTable (Line API, renders only what is on
screen, for positions)."""
