"""The sidecar's own secrets: the local database's password reaches the
sidecar through a file only its owner can read, or the environment, never the
command line other users see in ps; and no libpq secret (password,
sslpassword) is in the sidecar's log or messages, whatever the form of the
connection string and however it fails.

A cluster of its own that takes TCP connections on 127.0.0.1 with a password
(scram-sha-256) for the role the sidecar uses, so the password in the
connection string is the one that lets the sidecar in.
"""

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

import psycopg2
import pytest

from apply_env import SIDECAR_BINARY
from conftest import NODE_SERVER_CONF
from ks_helpers import wait_until
from pg_env import PgCluster

ROLE = "ks_sidecar"
DB = "chat"
ENV_VAR = "KAFKA_SYNC_SIDECAR_DSN"
# nothing listens there: the subscriptions are only there for the sidecar to run them
NO_BROKER = "127.0.0.1:9"
FD_SETSIZE = 1024


@pytest.fixture(scope="module")
def tcp_pg():
    conf = dict(NODE_SERVER_CONF, listen_addresses="127.0.0.1", password_encryption="scram-sha-256")
    pg = PgCluster(f"ks_sidecar_secrets_{os.getpid()}", extra_conf=conf)
    # first match wins: the sidecar's role must give its password over TCP
    hba = pg.datadir / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pg.start()
    # a space, a quote and a backslash: quoting in the keyword form, encoding in a URI
    pg.password = f"Pw{uuid.uuid4().hex} x'{uuid.uuid4().hex}\\"
    pg.sql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD %s", (pg.password,))
    pg.create_database(DB)
    pg.sql("CREATE EXTENSION kafka_sync", dbname=DB)
    pg.sql("CREATE TABLE items (id int PRIMARY KEY)", dbname=DB)
    subscribe(pg, "from_peer", "peer")
    yield pg
    pg.destroy()


def subscribe(pg, name, peer):
    pg.sql("SELECT kafka_sync.create_subscription(%s, %s, %s, start => 'latest', "
           "tables => ARRAY['public.items']::regclass[])", (name, peer, NO_BROKER), dbname=DB)


def quoted(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def keyword_dsn(pg, password, sslpassword):
    # sslpassword decrypts a client key; without SSL libpq ignores it, but it is a secret all the same
    return (f"host=127.0.0.1 port={pg.port} user={ROLE} dbname={DB} "
            f"password={quoted(password)} sslpassword={quoted(sslpassword)}")


def uri_dsn(pg, password, sslpassword):
    q = urllib.parse.quote
    return (f"postgresql://{ROLE}:{q(password, safe='')}@127.0.0.1:{pg.port}/{DB}"
            f"?sslpassword={q(sslpassword, safe='')}&application_name=x")


def secret_pieces(*secrets):
    """Each secret as given and URI-encoded, and its blank-separated pieces:
    none of them may be shown."""
    out = set()
    for s in secrets:
        out.update({s, urllib.parse.quote(s, safe='')})
        out.update(piece for piece in s.split() if len(piece) >= 6)
    return out


def assert_not_shown(text, secrets, where):
    for s in secret_pieces(*secrets):
        assert s not in text, f"a secret ({s[:4]}...) is shown in {where}:\n{text[-3000:]}"


def write_dsn_file(directory, dsn, mode=0o600):
    path = os.path.join(directory, "sidecar.dsn")
    with open(path, "w") as f:
        f.write(dsn + "\n")
    os.chmod(path, mode)
    return path


def run_sidecar(args, env_dsn=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != ENV_VAR}
    if env_dsn is not None:
        env[ENV_VAR] = env_dsn
    return subprocess.run([str(SIDECAR_BINARY)] + args, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


class Daemon:
    """A kafka_sync_sidecar process, its stderr in a file; high_fds: started
    with descriptors 3..1100 taken, so that each of its sockets is above FD_SETSIZE."""

    def __init__(self, args, logfile, env_dsn=None, high_fds=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != ENV_VAR}
        if env_dsn is not None:
            env[ENV_VAR] = env_dsn
        argv = [str(SIDECAR_BINARY)] + args + ["--log-level", "debug"]
        if high_fds:
            fill = ("import os, sys\n"
                    "while True:\n"
                    "    fd = os.open('/dev/null', os.O_RDONLY)\n"
                    "    os.set_inheritable(fd, True)\n"
                    "    if fd >= 1100: break\n"
                    "os.execv(sys.argv[1], sys.argv[1:])\n")
            argv = [sys.executable, "-c", fill] + argv
        self.logfile = logfile
        with open(logfile, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def log_text(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def cmdline(self):
        with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")

    def ps_line(self):
        out = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        assert "kafka_sync_sidecar" in out, f"ps shows no sidecar: {out!r}"
        return out

    def stop(self, timeout=30):
        """SIGTERM; the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def sidecar_sessions(pg, application_name="kafka_sync_sidecar"):
    """Sessions of the sidecar's role that came over TCP (with the password)."""
    return pg.sql("SELECT pid FROM pg_stat_activity WHERE usename = %s AND application_name = %s "
                  "AND client_addr = '127.0.0.1'", (ROLE, application_name))


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="ks_sidecar_secrets_")
    os.chmod(d, 0o700)
    yield d
    subprocess.run(["rm", "-rf", d])


def run_daemon_and_check_secrets(pg, workdir, args, secrets, env_dsn=None):
    """Starts the sidecar, waits until its supervisor and the subscription's
    runner are connected over TCP, and checks ps and the log for the secrets."""
    daemon = Daemon(args, os.path.join(workdir, "sidecar.log"), env_dsn=env_dsn)
    try:
        wait_until(lambda: sidecar_sessions(pg), 30, "the sidecar connected with its password",
                   diagnostics=lambda: daemon.log_text()[-3000:])
        wait_until(lambda: sidecar_sessions(pg, "kafka_sync_sidecar from_peer"), 30,
                   "the subscription's runner connected", diagnostics=lambda: daemon.log_text()[-3000:])
        assert_not_shown(daemon.cmdline(), secrets, "/proc/<pid>/cmdline")
        assert_not_shown(daemon.ps_line(), secrets, "ps")
    finally:
        rc = daemon.stop()
    log = daemon.log_text()
    assert rc == 0, log[-3000:]
    assert_not_shown(log, secrets, "the sidecar's log")
    return log


def test_a_dsn_file_brings_the_password_and_neither_ps_nor_the_log_shows_it(tcp_pg, workdir):
    sslpassword = "Ssl" + uuid.uuid4().hex
    path = write_dsn_file(workdir, keyword_dsn(tcp_pg, tcp_pg.password, sslpassword))

    check = run_sidecar(["--dsn-file", path, "--check"])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "subscription from_peer" in check.stdout
    assert_not_shown(check.stdout + check.stderr, [tcp_pg.password, sslpassword], "--check's output")

    log = run_daemon_and_check_secrets(tcp_pg, workdir, ["--dsn-file", path], [tcp_pg.password, sslpassword])
    # the connection string is shown, its secrets masked
    assert "password=**** sslpassword=****" in log
    assert f"(from --dsn-file {path})" in log
    assert "holds a password" not in log


def test_the_environment_brings_a_uri_and_neither_ps_nor_the_log_shows_its_password(tcp_pg, workdir):
    sslpassword = "Ssl" + uuid.uuid4().hex
    dsn = uri_dsn(tcp_pg, tcp_pg.password, sslpassword)

    check = run_sidecar(["--check"], env_dsn=dsn)
    assert check.returncode == 0, check.stdout + check.stderr
    assert_not_shown(check.stdout + check.stderr, [tcp_pg.password, sslpassword], "--check's output")

    log = run_daemon_and_check_secrets(tcp_pg, workdir, [], [tcp_pg.password, sslpassword], env_dsn=dsn)
    assert f"postgresql://{ROLE}:****@127.0.0.1:{tcp_pg.port}/{DB}?sslpassword=****&application_name=x" in log
    assert f"(from ${ENV_VAR})" in log


def test_a_dsn_on_the_command_line_still_works_but_its_secrets_are_masked_in_the_log_with_a_warning(
        tcp_pg, workdir):
    sslpassword = "Ssl" + uuid.uuid4().hex
    dsn = keyword_dsn(tcp_pg, tcp_pg.password, sslpassword)
    daemon = Daemon(["--dsn", dsn], os.path.join(workdir, "sidecar.log"))
    try:
        wait_until(lambda: sidecar_sessions(tcp_pg), 30, "the sidecar connected",
                   diagnostics=lambda: daemon.log_text()[-3000:])
    finally:
        assert daemon.stop() == 0
    log = daemon.log_text()
    assert_not_shown(log, [tcp_pg.password, sslpassword], "the sidecar's log")
    assert "password=**** sslpassword=****" in log
    assert "holds a password, which every local user can read (ps)" in log


def test_a_dsn_file_group_or_others_may_read_is_refused(tcp_pg, workdir):
    path = write_dsn_file(workdir, keyword_dsn(tcp_pg, tcp_pg.password, "x"), mode=0o644)
    r = run_sidecar(["--dsn-file", path, "--check"])
    assert r.returncode == 2
    assert f'the DSN file "{path}" has group or world access (mode 0644)' in r.stderr
    assert_not_shown(r.stdout + r.stderr, [tcp_pg.password], "the refusal")

    # group-readable is all right only when root owns the file (root:kafka_sync 0640)
    os.chmod(path, 0o640)
    postgres = pwd.getpwnam("postgres")
    os.chown(path, postgres.pw_uid, postgres.pw_gid)
    r = run_sidecar(["--dsn-file", path, "--check"])
    assert r.returncode == 2 and "has group or world access (mode 0640)" in r.stderr, r.stderr
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
        r = run_sidecar(["--dsn-file", path, "--check"])
        assert r.returncode == 0, r.stderr


def test_the_connection_string_comes_from_exactly_one_source(tcp_pg, workdir):
    dsn = keyword_dsn(tcp_pg, tcp_pg.password, "x")
    path = write_dsn_file(workdir, dsn)
    for args, env_dsn, given in ((["--dsn-file", path, "--dsn", "dbname=chat"], None, "--dsn-file, --dsn"),
                                 (["--dsn-file", path], dsn, f"--dsn-file, ${ENV_VAR}"),
                                 (["--dsn", "dbname=chat"], dsn, f"--dsn, ${ENV_VAR}")):
        r = run_sidecar(args + ["--check"], env_dsn=env_dsn)
        assert r.returncode == 2, r.stderr
        assert f"must come from exactly one of --dsn-file, ${ENV_VAR} and --dsn (given: {given})" in r.stderr
        assert_not_shown(r.stdout + r.stderr, [tcp_pg.password], "the refusal")
    r = run_sidecar(["--check"])
    assert r.returncode == 2 and "no connection string" in r.stderr
    empty = write_dsn_file(workdir, "  ")
    r = run_sidecar(["--dsn-file", empty, "--check"])
    assert r.returncode == 2 and "is empty" in r.stderr
    r = run_sidecar(["--dsn-file", os.path.join(workdir, "missing"), "--check"])
    assert r.returncode == 2 and "cannot open the DSN file" in r.stderr
    help_text = run_sidecar(["--help"]).stdout
    for word in ("--dsn-file", ENV_VAR, "PGPASSWORD", "PGPASSFILE", "chmod 600"):
        assert word in help_text


def test_a_refused_password_or_a_broken_connection_string_is_reported_without_the_secret(tcp_pg, workdir):
    wrong = "Wrong" + uuid.uuid4().hex
    sslpassword = "Ssl" + uuid.uuid4().hex
    path = write_dsn_file(workdir, keyword_dsn(tcp_pg, wrong, sslpassword))
    r = run_sidecar(["--dsn-file", path, "--check"])
    assert r.returncode == 1
    assert "password authentication failed" in r.stderr, r.stderr
    assert_not_shown(r.stdout + r.stderr, [wrong, sslpassword], "the failure")

    # the daemon keeps retrying and says why, without the password
    daemon = Daemon(["--dsn-file", path], os.path.join(workdir, "sidecar.log"))
    try:
        wait_until(lambda: "password authentication failed" in daemon.log_text(), 30, "the refusal logged")
    finally:
        assert daemon.stop() == 0
    assert_not_shown(daemon.log_text(), [wrong, sslpassword], "the sidecar's log")

    # libpq quotes the piece it stumbled on: here the password's second half
    secret_half = uuid.uuid4().hex
    for broken in (f"host=127.0.0.1 password=first {secret_half} dbname=chat",
                   f"host=127.0.0.1 sslpassword='{secret_half} dbname=chat",
                   f"postgresql://{ROLE}:{secret_half}%zz@127.0.0.1/chat",
                   f"postgresql://{ROLE}:{secret_half}@[::1"):
        r = run_sidecar(["--check"], env_dsn=broken)
        assert r.returncode == 2, r.stderr
        assert "is invalid" in r.stderr, r.stderr
        assert secret_half not in r.stdout + r.stderr, r.stderr


def test_a_database_socket_above_fd_setsize_still_wakes_the_sidecar(tcp_pg, workdir):
    """poll, not select: with descriptors 3..1100 taken, the supervisor's
    connection is above FD_SETSIZE; a new subscription's notification still
    starts its runner at once (the periodic re-read is 5 s away), and a stop
    signal still ends the sidecar."""
    path = write_dsn_file(workdir, keyword_dsn(tcp_pg, tcp_pg.password, "x"))
    daemon = Daemon(["--dsn-file", path], os.path.join(workdir, "sidecar.log"), high_fds=True)
    try:
        wait_until(lambda: sidecar_sessions(tcp_pg, "kafka_sync_sidecar from_peer"), 30,
                   "the sidecar and its first runner connected", diagnostics=lambda: daemon.log_text()[-3000:])
        sockets = [int(fd) for fd in os.listdir(f"/proc/{daemon.proc.pid}/fd")
                   if os.readlink(f"/proc/{daemon.proc.pid}/fd/{fd}").startswith("socket:")]
        assert sockets and min(sockets) >= FD_SETSIZE, f"the test's premise: sockets at {sockets}"
        for attempt in range(3):
            name = f"from_peer{attempt}"
            subscribe(tcp_pg, name, f"peer{attempt}")
            started = time.monotonic()
            wait_until(lambda: sidecar_sessions(tcp_pg, f"kafka_sync_sidecar {name}"), 30, f"{name} started",
                       interval=0.05, diagnostics=lambda: daemon.log_text()[-3000:])
            assert time.monotonic() - started < 2.5, "the notification did not wake the sidecar"
        assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    finally:
        rc = daemon.stop(timeout=15)
        for attempt in range(3):
            tcp_pg.sql("SELECT kafka_sync.drop_subscription(%s) FROM kafka_sync.subscription WHERE sub_name = %s",
                       (f"from_peer{attempt}", f"from_peer{attempt}"), dbname=DB)
    assert rc == 0, "SIGTERM did not stop the sidecar:\n" + daemon.log_text()[-3000:]
