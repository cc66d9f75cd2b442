"""The fake algod/indexer of stackwatch.demo.fakealgod, run in a background loop for the tests."""

from __future__ import annotations

from stackwatch.demo.fakealgod import (  # noqa: F401  (re-exported for the tests)
    ADMIN,
    CREATE_TXID,
    MAINNET_HASH,
    PAM_ASSET,
    PARTICIPANT,
    TESTNET_HASH,
    healthy_state,
    node_runner_state,
    seed_000_state,
)
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from stackwatch.demo.fakealgod import FakeAlgorand as _Fake
from targets import LoopThread, free_port


class FakeAlgorand(_Fake):
    def __init__(self, token: str):
        super().__init__(token)
        self.lt = LoopThread()
        self.lt.run(self.start(free_port(), free_port()))

    def close(self) -> None:
        self.lt.run(self.stop())
        self.lt.close()


@contextmanager
def fake_algod(token: str, state: Callable[[str], Any] | None = None) -> Iterator[FakeAlgorand]:
    """The one way tests run a fake algod (no Algorand node can be reached here): started on two
    free ports in a background loop, put in ``state(token)`` if given, always stopped."""
    fake = FakeAlgorand(token)
    try:
        if state is not None:
            fake.reset(state(token))
        yield fake
    finally:
        fake.close()
