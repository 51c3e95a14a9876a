"""The README's quick start, run as written (with a short training and a free port)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_make_run_fetches_trains_indexes_and_serves(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "VENV": str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")))}
    proc = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "run",
            f"DATA={tmp_path / 'data'}",
            f"STORE={tmp_path / 'store'}",
            f"PORT={port}",
            "TRAIN_ARGS=--epochs 2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    ready = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert ready, f"service never became ready (exit {proc.poll()})"
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/recommend",
            json={"history": ["1", "50", "181"], "k": 5},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["strategy"] == "personalized" and len(body["items"]) == 5
        assert not {"1", "50", "181"} & {i["item_id"] for i in body["items"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
