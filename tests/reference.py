"""Rebuild the reference fixtures' tensors ("splitmix-uniform", fixtures/reference/README.md)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix_uniform(name: str, shape: list[int], lo: float, hi: float) -> np.ndarray:
    """The fixture value recipe: splitmix64 of crc32(name) + i·golden, mapped to [lo, hi)."""
    n = int(np.prod(shape)) if shape else 1
    seed = np.uint64(zlib.crc32(name.encode("utf-8")))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def load_fixture(path: Path) -> dict:
    return json.loads(path.read_text())


def fixture_tensors(fx: dict) -> dict[str, np.ndarray]:
    """The fixture's tensors in its own order and layout (integer counters are 0)."""
    out = {}
    for name, shape, lo, hi in fx["tensors"]:
        if lo is None:
            out[name] = np.zeros(shape, dtype=np.int64)
        else:
            out[name] = splitmix_uniform(name, shape, lo, hi)
    return out


def fixture_input(fx: dict) -> np.ndarray:
    spec = fx["input"]
    return splitmix_uniform(spec["name"], spec["shape"], spec["lo"], spec["hi"])


def all_fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))
