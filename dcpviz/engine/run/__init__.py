"""Real runs: W processes with a process group, real tensors, real files: ``procs`` (start and
collect workers), ``launch`` (what both directions share), ``save`` (run_save), ``load`` (run_load)."""
