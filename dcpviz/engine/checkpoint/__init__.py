"""A checkpoint on disk, read without executing anything from it: the restricted ``.metadata``
reader (``reader``), its shape checks (``metadata_check``), BYTE_IO entries (``byteio``), the
saved side of a load (``saved``), and the fixing load planners a user runs (``fix_planner``)."""
