from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from targets import TargetServers  # noqa: E402


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory):
    s = TargetServers(tmp_path_factory.mktemp("tls"))
    yield s
    s.close()


@pytest.fixture(autouse=True)
async def close_probe_state():
    """Each test's kinds and their state (clients, engines, pools) end with the test, as they
    end with an exporter run: nothing leaks into the next test."""
    yield
    import probing

    await probing.close_clients()
