"""The recording planners a user puts inside their own job: ``recorder`` (what both share),
``save`` (RecordingSavePlanner) and ``load`` (RecordingLoadPlanner). They import neither the
simulator nor its shortcuts (an import-linter contract)."""
