"""PostgreSQL side of the pytest harness for kafka_sync.

PgCluster creates a throwaway cluster reachable only over a Unix socket in
its own directory. PostgreSQL refuses to run as root, so when the tests run
as root every server-side command is executed as the OS user `postgres`
through runuser; when they already run as an unprivileged user, directly.
"""

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
import weakref
from pathlib import Path

import psycopg2
from psycopg2 import sql as pgsql

BASE_DIR = Path(os.environ.get("KAFKA_SYNC_PYTEST_DIR",
                               "/tmp/kafka_sync_pytest"))
DEFAULT_BASE_PORT = int(os.environ.get("KAFKA_SYNC_PYTEST_PORT", "54400"))
SERVER_USER = "postgres"   # OS user when running as root
DB_SUPERUSER = "postgres"  # initdb -U, independent of the OS user

# Ports handed out in this process; clusters use private socket directories,
# but the extension or tools may still open TCP ports derived from them.
_ports_in_use = set()


def _pg_config():
    candidates = [os.environ.get("PG_CONFIG"), shutil.which("pg_config"),
                  "/usr/lib/postgresql/15/bin/pg_config"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError("pg_config not found; set $PG_CONFIG")


def pg_bindir():
    out = subprocess.run([_pg_config(), "--bindir"], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip())


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_port(base=DEFAULT_BASE_PORT, tries=500):
    for port in range(base, base + tries):
        if port not in _ports_in_use and _port_free(port):
            _ports_in_use.add(port)
            return port
    raise RuntimeError(f"no free port in {base}..{base + tries}")


def _conf_value(v):
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def _clean_env():
    # Stray PG* variables from the caller's shell (PGDATA, PGPORT, PGOPTIONS)
    # would silently redirect pg_ctl or the server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _as_server_user(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--"] + argv
    return argv


def _emergency_stop(pg_ctl, datadir):
    # Finalizer/atexit hook: never leave a postmaster behind a failed run.
    if (Path(datadir) / "postmaster.pid").exists():
        subprocess.run(_as_server_user([str(pg_ctl), "-D", str(datadir), "-m",
                                       "immediate", "-w", "stop"]),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=_clean_env(),
                       cwd="/")


class PgCluster:
    def __init__(self, name, port=None, extra_conf=None, base_dir=None):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"bad cluster name {name!r}")
        self.name = name
        self.port = int(port) if port else find_free_port()
        _ports_in_use.add(self.port)
        self.bindir = pg_bindir()
        self.dir = Path(base_dir or BASE_DIR) / name
        self.datadir = self.dir / "data"
        self.socket_dir = self.dir
        self.logfile = self.dir / "server.log"
        self.user = DB_SUPERUSER

        self._as_root = os.geteuid() == 0
        self._finalizer = weakref.finalize(
            self, _emergency_stop, self.bindir / "pg_ctl", self.datadir)

        self._prepare_dir()
        self._initdb()
        self._write_conf(extra_conf or {})

    # -- process helpers ---------------------------------------------------

    def _run(self, argv, check=True, timeout=120):
        proc = subprocess.run(_as_server_user([str(a) for a in argv]),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, env=_clean_env(), cwd=str(self.dir),
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- server log tail ---\n"
                f"{self.log_text()[-3000:]}")
        return proc

    def _chown(self, path):
        if self._as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _prepare_dir(self):
        base = self.dir.parent
        base.mkdir(parents=True, exist_ok=True)
        # Sticky and world-writable like /tmp, so runs as root and as postgres
        # can share the base directory.
        if base.stat().st_uid == os.geteuid():
            os.chmod(base, 0o1777)
        if self.dir.exists():
            # Leftover from an aborted run: its server may still be up.
            if (self.datadir / "postmaster.pid").exists():
                _emergency_stop(self.bindir / "pg_ctl", self.datadir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(mode=0o700)
        self._chown(self.dir)

    def _initdb(self):
        self._run([self.bindir / "initdb", "-D", self.datadir,
                   "-U", DB_SUPERUSER, "--auth-local=trust",
                   "--auth-host=trust", "-E", "UTF8", "--locale=C",
                   "--no-sync"])

    def _write_conf(self, extra_conf):
        base = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "port": self.port,
            # Only OS crashes lose data with fsync off; "immediate" restarts
            # still exercise real crash recovery.
            "fsync": False,
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        base.update(extra_conf)
        # Kept in a separate included file so update_conf() can rewrite it.
        self._conf = base
        self._write_included_conf()
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# added by test/pytest/pg_env.py\n"
                    "include 'kafka_sync_pytest.conf'\n")

    def _write_included_conf(self):
        path = self.datadir / "kafka_sync_pytest.conf"
        with open(path, "w") as f:
            for k, v in self._conf.items():
                f.write(f"{k} = {_conf_value(v)}\n")
        self._chown(path)

    def update_conf(self, settings):
        """Merge settings into the cluster's config (restart/reload to apply)."""
        self._conf.update(settings)
        self._write_included_conf()

    # -- lifecycle -----------------------------------------------------------

    def is_running(self):
        return (self.datadir / "postmaster.pid").exists()

    def start(self, timeout=60):
        self._run([self.bindir / "pg_ctl", "-D", self.datadir, "-l",
                   self.logfile, "-w", "-t", timeout, "start"],
                  timeout=timeout + 30)

    def stop(self, mode="fast", timeout=60):
        if not self.is_running():
            return
        self._run([self.bindir / "pg_ctl", "-D", self.datadir, "-m", mode,
                   "-w", "-t", timeout, "stop"], timeout=timeout + 30)

    def restart(self, mode="fast"):
        """Stop (mode 'fast' or 'immediate', i.e. a simulated crash), start."""
        self.stop(mode=mode)
        self.start()

    def reload(self):
        self._run([self.bindir / "pg_ctl", "-D", self.datadir, "reload"])

    def destroy(self):
        try:
            self.stop(mode="immediate")
        finally:
            self._finalizer.detach()
            _ports_in_use.discard(self.port)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    # -- SQL -------------------------------------------------------------------

    def dsn(self, dbname="postgres"):
        return (f"host={self.socket_dir} port={self.port} "
                f"user={self.user} dbname={dbname}")

    def connect(self, dbname="postgres", autocommit=True, **kwargs):
        conn = psycopg2.connect(host=str(self.socket_dir), port=self.port,
                                user=self.user, dbname=dbname, **kwargs)
        conn.autocommit = autocommit
        return conn

    def sql(self, query, params=None, dbname="postgres"):
        """Run one statement in autocommit mode; rows if it returns any."""
        conn = self.connect(dbname=dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                if cur.description is None:
                    return None
                return cur.fetchall()
        finally:
            conn.close()

    def create_database(self, name):
        self.sql(pgsql.SQL("CREATE DATABASE {}").format(
            pgsql.Identifier(name)))

    # -- server log ------------------------------------------------------------

    def log_position(self):
        try:
            return self.logfile.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since=0):
        """Server log content, optionally from a log_position() onwards."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern, timeout=10.0, since=0):
        """Wait for a regex to appear in the log; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(since))
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} not in server log after {timeout}s:\n"
                    f"{self.log_text(since)[-3000:]}")
            time.sleep(0.1)
