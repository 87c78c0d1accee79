"""What every source (simulate, run, capture) shares about DCP's planners: one fresh planner
per rank, the coordinator's global plan before validation, the stamps a trace carries (scenario,
torch version, time, planner errors), and the mismatches between a target and a checkpoint."""
