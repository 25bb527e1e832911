"""Shared test settings: hypothesis profile, gpu skipping."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Deterministic property tests: a fixed database-less profile with a seed derived from the test.
settings.register_profile("lshsim", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.load_profile(os.environ.get("LSHSIM_HYPOTHESIS_PROFILE", "lshsim"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
