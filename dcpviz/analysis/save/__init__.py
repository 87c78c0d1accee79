"""Tables of a save trace: ``tables`` (write items, dedup, chunks, volumes), the storage writer's
file plan (``file_tables``, ``file_checks``), and periodic saves (``series``)."""
