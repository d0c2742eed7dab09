"""Where the tests find the repository, wherever in tests/ they live (the folders mirror the sources')."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WAT = TESTS / "wat"
