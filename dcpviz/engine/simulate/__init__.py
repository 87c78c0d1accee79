"""Simulation: DCP's real planners for every rank of a W-rank job, in this one process:
``phases`` (the phase loop both directions share), ``save`` (simulate_save), ``load``
(simulate_load) and ``storageless`` (tensors with shapes but no memory, for the load planner)."""
