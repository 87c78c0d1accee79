"""Tests written for the verdict's surviving mutants (bench/mutate.py, analysis/verdict.py), each
asserting a fact that does not come from the code under test: what dcp.load really does, or a
hand-computed expectation."""

from __future__ import annotations
