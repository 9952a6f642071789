"""Fixtures: small synthetic datasets written once per test session (no real data needed)."""

import os
from pathlib import Path

import pytest

from samfed.data.synth import write_synthetic


@pytest.fixture(scope="session", autouse=True)
def _signing_key_in_tmp(tmp_path_factory):
    """`samfed export` signs with a per-user key made on first use: keep it out of the real home."""
    old = os.environ.get("SAMFED_SIGNING_KEY")
    os.environ["SAMFED_SIGNING_KEY"] = str(tmp_path_factory.mktemp("signing") / "signing_key.pem")
    yield
    if old is None:
        os.environ.pop("SAMFED_SIGNING_KEY", None)
    else:
        os.environ["SAMFED_SIGNING_KEY"] = old


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """Runs keep speed-up caches in $SAMFED_CACHE (default ~/.cache/samfed): keep them out of the home."""
    old = os.environ.get("SAMFED_CACHE")
    os.environ["SAMFED_CACHE"] = str(tmp_path_factory.mktemp("samfed-cache"))
    yield
    if old is None:
        os.environ.pop("SAMFED_CACHE", None)
    else:
        os.environ["SAMFED_CACHE"] = old


@pytest.fixture(scope="session")
def polyp_dir(tmp_path_factory) -> Path:
    """24 endoscopy-like images (three scope resolutions around 96 px) in the Kvasir-SEG layout."""
    return write_synthetic("polyp", 24, tmp_path_factory.mktemp("polyp"), seed=0, size=96)


@pytest.fixture(scope="session")
def skin_dir(tmp_path_factory) -> Path:
    """24 dermoscopy-like 96x96 images in the ISIC 2018 Task 1 layout."""
    return write_synthetic("skin", 24, tmp_path_factory.mktemp("skin"), seed=0, size=96)
