import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: builds a Debian image with mmdebstrap (network, ~20 s)")
