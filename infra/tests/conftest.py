"""Shared fixtures. The repository root defaults to two levels above this folder and can be
pointed elsewhere with CHATTY_REPO_ROOT (the self-tests use that to check mutated copies)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_ROOT = Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    return Path(os.environ.get("CHATTY_REPO_ROOT", DEFAULT_ROOT)).resolve()


@pytest.fixture(scope="session")
def root() -> Path:
    return repo_root()
