"""`segswap eval`: a fixed suite of real photographs through an engine, weight-free measures, a contact sheet."""

from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent / "suite"
