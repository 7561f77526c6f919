"""Shared fixtures: paths to the shared speech data and the verified model store."""

from __future__ import annotations

import os
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
try:  # pipecat logs through loguru at DEBUG, including content: keep test output readable.
    from loguru import logger as _loguru

    _loguru.remove()
    _loguru.add(sys.stderr, level="WARNING")
except ImportError:  # pragma: no cover
    pass

STORE = Path(os.environ.get("APPLIANCE_MODEL_STORE", REPO / "models" / "store"))


#: The order the layers run in: the fast ones first, the disk image (tens of minutes, and it fills
#: gigabytes of disk while it builds) last, so a failure there neither hides nor starves the rest.
LAYER_ORDER = ("unit", "admin", "pipeline", "e2e", "fleet", "image")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the test layers in :data:`LAYER_ORDER` (stable within a layer)."""

    def rank(item: pytest.Item) -> int:
        parts = Path(str(item.path)).parts
        at = len(parts) - 1 - parts[::-1].index("tests") if "tests" in parts else len(parts)
        layer = parts[at + 1] if at + 2 < len(parts) else ""
        return LAYER_ORDER.index(layer) if layer in LAYER_ORDER else len(LAYER_ORDER)

    items.sort(key=rank)


def speech_dir() -> Path:
    """The shared telephone-speech directory, or skip the test with a clear reason."""
    if not (SPEECH / "manifest.tsv").exists():
        pytest.skip(f"shared speech data not found at {SPEECH} (clone next to shared/)")
    return SPEECH


def read_pcm(path: Path, rate: int = 16000) -> np.ndarray:
    """Read a mono 16-bit WAV as int16 samples resampled (soxr) to ``rate`` Hz."""
    with wave.open(str(path), "rb") as w:
        src = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if src != rate:
        pcm = soxr.resample(pcm, src, rate).astype(np.int16)
    return pcm


@pytest.fixture(scope="session")
def store() -> Path:
    """The assembled model store (./build.sh setup), or skip."""
    if not (STORE / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
        pytest.skip(f"model store not assembled at {STORE}; run ./build.sh setup")
    return STORE


@pytest.fixture(scope="session")
def models(store: Path):  # noqa: ANN201 - returns appliance.models.engines.ModelSet
    """The default engines, loaded once for the whole test session."""
    from appliance.config.settings import ModelSettings
    from appliance.models.engines import load_models

    return load_models(ModelSettings(store=store))


@pytest.fixture()
def tiny_fs(tmp_path: Path):  # noqa: ANN201
    """A 2 MiB tmpfs mounted for one test (to fill the disk), or skip without root."""
    import shutil
    import subprocess

    mnt = tmp_path / "tiny-fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def embedder(store: Path):  # noqa: ANN201 - returns appliance.models.engines.EmbeddingEngine
    """all-MiniLM-L6-v2 from the verified store (loaded once per test session)."""
    from appliance.models.engines import EmbeddingEngine

    return EmbeddingEngine(store / "embedding" / "all-MiniLM-L6-v2")


#: The clock of the dialogue tests: a Sunday morning, so "Tuesday" is the 24th.
NOW = __import__("datetime").datetime(2026, 11, 22, 10, 0)


@pytest.fixture()
def agent(embedder, tmp_path: Path):  # noqa: ANN001, ANN201 - returns AgentRuntime
    """The shipped workflows and knowledge base over a demo calendar seeded for :data:`NOW`."""
    from appliance.agent.calendar import seed_demo
    from appliance.agent.runtime import load_agent
    from appliance.config.settings import ApplianceSettings

    calendar = seed_demo(tmp_path / "calendar.sqlite", NOW.date())
    runtime = load_agent(ApplianceSettings(), embedder.encode, calendar=calendar)
    yield runtime
    calendar.close()
