"""The nanoGPT journey's jobs (examples/nanogpt_resume.py), importable from the tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from nanogpt_resume import GROWN, SAVED, TARGET, VOCAB, build_resume, build_trained, compiled_state  # noqa: E402

__all__ = ["GROWN", "SAVED", "TARGET", "VOCAB", "build_resume", "build_trained", "compiled_state"]
