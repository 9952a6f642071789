"""Fixtures: small synthetic datasets written once per test session (no real data needed)."""

from pathlib import Path

import pytest

from samfed.data.synth import write_synthetic


@pytest.fixture(scope="session")
def polyp_dir(tmp_path_factory) -> Path:
    """24 endoscopy-like images (three scope resolutions around 96 px) in the Kvasir-SEG layout."""
    return write_synthetic("polyp", 24, tmp_path_factory.mktemp("polyp"), seed=0, size=96)


@pytest.fixture(scope="session")
def skin_dir(tmp_path_factory) -> Path:
    """24 dermoscopy-like 96x96 images in the ISIC 2018 Task 1 layout."""
    return write_synthetic("skin", 24, tmp_path_factory.mktemp("skin"), seed=0, size=96)
