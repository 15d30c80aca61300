"""Shared fixtures: a numpy-backed primary KV buffer like vLLM's (one block per row)."""

import numpy as np
import pytest

BLOCK = 64 * 1024


def fill(buf: np.ndarray, slot: int, seed: int) -> bytes:
    """Writes a recognisable page into row `slot`; returns its bytes."""
    rng = np.random.default_rng(seed)
    buf[slot] = rng.integers(0, 256, size=buf.shape[1], dtype=np.uint8)
    return buf[slot].tobytes()


@pytest.fixture
def primary():
    """A 32-block primary buffer of 64 KiB blocks."""
    return np.zeros((32, BLOCK), dtype=np.uint8)


@pytest.fixture
def tier_dir(tmp_path):
    d = tmp_path / "kvtier"
    return str(d)
