"""The core: errors, the trace model and its versioned JSON codec, units and DCP file names.

Imports neither torch, plotly nor pandas, so a trace captured on a cluster opens anywhere
(import-linter checks this; see ``[tool.importlinter]`` in pyproject.toml).
"""
