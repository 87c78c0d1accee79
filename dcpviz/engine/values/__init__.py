"""Real values: give a meta model storage and values that tell shards apart (``materialize``),
and the fingerprints (digests) of what a rank holds, before a save and after a load (``digests``)."""
