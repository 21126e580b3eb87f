"""Test configuration shared by every test module.

Hypothesis profiles:
  ci        deterministic (derandomized), bounded example counts, no deadline — the default, used by CI;
  thorough  many more examples, randomized — for local runs:  VASHISTA_HYPOTHESIS=thorough pytest
"""
import os

# Kernels run under Triton's interpreter on machines without a GPU. This must be set before triton
# is first imported anywhere.
if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch  # noqa: F401

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        os.environ["TRITON_INTERPRET"] = "1"

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("VASHISTA_HYPOTHESIS", "ci"))


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def no_cyclic_gc():
    """Python's cyclic collector off for the test (restored after): what a reference cycle keeps alive
    stays alive, as it does on a GPU between the collector's runs (device memory never triggers one)."""
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()
