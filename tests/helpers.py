"""Small helpers the test modules share (`from helpers import ...`; pytest puts tests/ on the
path as it imports conftest.py). Fixtures live in conftest.py."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it; it is free again
    once this returns). Taken in this process's network namespace: another namespace (the
    multi-node tests' `ip netns` nodes) has its own ports, so it is free there too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeClock:
    """A clock that moves only when told to: call it for the time in seconds, `advance` it."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
