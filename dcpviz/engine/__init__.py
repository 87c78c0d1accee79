"""Sources that produce traces: simulate (one process), run (real processes), recording planners."""
