"""A real headless Chromium for the dashboard tests: Debian's ``chromium`` and ``chromium-driver``,
installed when missing (as tests/pg.py installs PostgreSQL), under a file lock so sessions side by
side install once."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL_LOCK = Path(tempfile.gettempdir()) / "tm-chromium-install.lock"


def _found() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    return (browser, driver) if browser and driver else None


def ensure_installed() -> tuple[str, str]:
    """Installs Chromium and its driver unless present; returns their paths."""
    found = _found()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("chromium is not installed and apt-get is not available")
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _found()
        if found is not None:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(
            [
                *sudo,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    found = _found()
    if found is None:
        raise RuntimeError("installed chromium and chromium-driver but cannot find them")
    return found
