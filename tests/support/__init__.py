"""Helpers the test layers share: images, API clients, server processes, model repositories."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
