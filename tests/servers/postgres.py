"""A real PostgreSQL server in a temporary folder, for the tests and for bench scripts.

Debian's server binaries are not on PATH (``pg_config --bindir`` names their folder), and the
server refuses to run as root: as root it runs as ``nobody``.  Trust authentication, bound to
127.0.0.1 on a free port, a Unix socket in its own folder; stopped and removed by ``stop()``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def binaries() -> Optional[Path]:
    """The folder of initdb and pg_ctl, or None where no PostgreSQL server is installed."""
    exe = shutil.which("pg_config")
    if not exe:
        return None
    try:
        bindir = Path(subprocess.run([exe, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="plugnas-pg-"))
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:  # the server refuses root: run it as nobody
            import pwd

            self.user = pwd.getpwnam("nobody")
            os.chmod(self.root, 0o755)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data, self.log = self.root / "data", self.root / "log"

    def _run(self, *args: str) -> None:
        def demote():
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        r = subprocess.run(args, preexec_fn=demote, capture_output=True, text=True, cwd=self.root,
                           env={**os.environ, "HOME": str(self.root)})
        if r.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {(r.stderr or r.stdout).strip()[-400:]}")

    def start(self) -> "Postgres":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "plugnas", "--auth=trust", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://plugnas@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
