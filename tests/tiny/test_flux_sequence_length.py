"""Loading tiny-flux warns once that it needs ``max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH`` (FluxPipeline's
default of 512 is a length it never saw: docs/tiny-flux.md measures the cost)."""

from __future__ import annotations

import warnings

import pytest

from nag_guidance.tiny import loading


def test_loading_tiny_flux_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(loading, "_WARNED_SEQUENCE_LENGTH", False)
    with pytest.warns(loading.SequenceLengthWarning, match=f"max_sequence_length={loading.FLUX_MAX_SEQUENCE_LENGTH}"):
        loading.load_pipeline(model="tiny-flux")
    with warnings.catch_warnings():
        warnings.simplefilter("error", loading.SequenceLengthWarning)
        loading.load_pipeline(model="tiny-flux")  # the second load says nothing
        loading.load_pipeline(model="tiny")  # and the UNet model never does
