"""Waiting for a ``langground serve`` subprocess to answer ``/healthz`` (the load test and the browser test
start one). Standard library only: the client side needs no extra."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once ``GET {url}/healthz`` gives 200.

    Raises:
        ChildProcessError: the server process exited first (the message has its exit code).
        TimeoutError: it did not answer within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ChildProcessError(f"langground serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"langground serve did not start within {timeout_s:g} s")
        time.sleep(0.2)
