"""The job being planned: the Scenario (model, world size, mesh, recipe, optimizer, state), the
model presets and parallelism recipes, the training state a rank saves, one rank's world inside
this process, and one rank's real sharded state dict built from all of these."""
