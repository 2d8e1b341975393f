"""Fixtures for the unit tests of the framing layer.

``twin`` runs a test body over the compiled module (``cserver._framing``)
and its pure-Python twin (``cserver._framing_py``), so a behaviour
difference shows as a test id.
"""
import importlib
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Modest, deterministic budgets; no example database, and Hypothesis's own
# caches go to a temporary directory, not into the source tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(),
                                     "cserver-hypothesis-%d" % os.getuid()))
settings.register_profile(
    "cserver", database=None, deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cserver")


def _load_twin(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        if name.endswith("._framing") and not os.environ.get("CSERVER_EXPECT_COMPILED"):
            pytest.skip("cserver._framing is not built (build_ext --inplace)")
        raise


@pytest.fixture(scope="session", params=["cserver._framing", "cserver._framing_py"],
                ids=["C", "py"])
def twin(request):
    """The C twin or the pure twin of the framing module."""
    return _load_twin(request.param)


@pytest.fixture(scope="session")
def ctwin():
    """The C twin only (for the C memory management)."""
    return _load_twin("cserver._framing")
