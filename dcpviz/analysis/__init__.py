"""Analysis: tidy pandas tables and hints derived from a trace alone (no torch, no plotly)."""
