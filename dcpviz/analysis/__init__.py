"""Analysis: tidy pandas tables and hints derived from a trace alone (no torch, no plotly).

``save`` (a save's tables, file plan, series), ``load`` (a load's tables, verdict, hints, fix),
``checkpoint`` (a checkpoint directory or Hugging Face folder), ``diff`` (two sides); at the top,
``checks`` (the findings of every kind of result) and ``groups`` (names for groups of tensors).
"""
