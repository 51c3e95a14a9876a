"""HTTP limits of every fusionrec server (app.http_protocol), with real raw-socket clients
against a real uvicorn: slow headers (slowloris), a huge header, a slow body."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.helpers.servers import LiveServer, make_settings


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(closed by the server within ``seconds``, what it sent before closing)."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_slow_huge_and_stalled_clients_are_cut_off(store: Path) -> None:
    settings = make_settings(
        store, http_header_timeout_s=1.0, http_body_timeout_s=1.0, http_max_header_bytes=16_384
    )
    with LiveServer(settings) as srv:
        # slowloris: 50 connections trickling header bytes, never finishing
        slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(50)]
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        time.sleep(0.5)
        for s in slow:
            s.sendall(b"a")  # still trickling: the deadline counts from the connection
        results = [_closed_within(s, 3.0) for s in slow]
        assert all(closed for closed, _ in results)
        assert results[0][1].startswith(b"HTTP/1.1 408")
        # a header over the limit: 431, closed
        over = socket.create_connection(("127.0.0.1", srv.port))
        over.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000)
        closed, got = _closed_within(over, 3.0)
        assert closed and got.startswith(b"HTTP/1.1 431"), got[:80]
        # a 32 MiB header: cut off long before it is all sent
        big = socket.create_connection(("127.0.0.1", srv.port))
        big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            big.settimeout(5)
            while sent < 32 << 20:
                big.sendall(b"a" * 65_536)
                sent += 65_536
        except OSError:  # reset / broken pipe: the server closed it
            pass
        assert sent < 8 << 20, f"the server kept reading a {sent}-byte header"
        assert _closed_within(big, 3.0)[0]
        # a body announced but never sent: the connection is closed
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.sendall(
            b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        t0 = time.monotonic()
        closed, _ = _closed_within(stalled, 4.0)
        assert closed and time.monotonic() - t0 < 3.5
        # and the server still answers normal clients
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        r = httpx.post(f"{srv.url}/v1/recommend", json={"history": ["i1"], "k": 2})
        assert r.status_code == 200, r.text
        for s in [*slow, over, big, stalled]:
            s.close()
