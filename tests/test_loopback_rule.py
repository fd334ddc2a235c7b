"""The one ``is_loopback``: what counts as this machine for http:// (the API base, URL
sources) and for a bind address without a client token."""

from __future__ import annotations

import pytest

from media_registry.graph.urls import is_loopback


@pytest.mark.parametrize("host", ["localhost", "LocalHost",
                                  "127.0.0.1", "127.8.9.10", "::1", "0:0:0:0:0:0:0:1"])
def test_this_machine(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["x.localhost", "x.localhost.", "localhost.", "LOCALHOST.", "localhost..",
                                  "localhost...",
                                  ".localhost", "localhost.example", "127.0.0.1.", "2130706433",
                                  "0.0.0.0", "::", "10.0.0.1", "", "[::1]"])
def test_anything_else_is_not(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("base", ["http://localhost.:9/v26.0", "http://localhost..:9/v26.0",
                                  "http://x.localhost:9/v26.0"])
def test_an_http_api_base_must_name_this_machine(base: str) -> None:
    from media_registry.graph.checks import check_api_base

    with pytest.raises(ValueError):
        check_api_base(base)
