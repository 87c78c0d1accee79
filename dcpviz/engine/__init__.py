"""Sources that produce traces, by concept (each sub-package's docstring says what lives there):

- ``job``: what is planned (Scenario, models, recipes, training state, one rank's world and state dict);
- ``planning``: what every source shares about DCP's planners (one per rank, stamps, mismatches);
- ``convert``: DCP's objects <-> trace records (shared, save, load);
- ``checkpoint``: a checkpoint on disk, read safely; the fixing load planners;
- ``storage``: storage writers' own planning; Hugging Face folders (save facts, load metadata);
- ``values``: real values (materialize) and their digests;
- ``simulate``: simulate_save / simulate_load, one process for W ranks;
- ``shortcuts``: the simulator's exact speed-ups (only the simulator imports them);
- ``run``: run_save / run_load, real processes;
- ``capture``: the recording planners a user puts in their own job (no simulator, no shortcuts);
- ``diff``: two checkpoints or traces, chunk by chunk.
"""
