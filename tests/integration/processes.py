"""Starting and stopping a real ``portcullis`` process in integration tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORTCULLIS = [sys.executable, "-c", "import sys; from controller.cli import main; sys.exit(main())"]


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """SIGTERM unless it has exited; SIGKILL if it is still running ``timeout`` seconds later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
