"""Tables of a diff of two checkpoints: ``tables`` (keys, chunks, values) and ``renames``
(rename candidates between the keys only in A and only in B)."""
