#!/usr/bin/env python3
"""Daemon benchmark: myhoard's snapshots, binlog uploads and restores against real MariaDB servers,
each measured against a baseline of the stock tools in the same run.

Usage: tests/bench/daemon_bench.py [--size-gb 2] [--rotations 30] [--transactions 200000]
                                   [--workdir /tmp] [--zstd-level 3] [--zstd-threads 1]
                                   BENCH [BENCH...]

BENCH is one or more of (or `all`):
  snapshot          loads a MariaDB database of --size-gb GiB (SEQUENCE engine, four tables of
                    semi-compressible rows), then times
                      - the baseline `mariabackup --backup --stream=xbstream | zstd -3 |
                        openssl enc -aes-128-ctr > file`;
                      - myhoard's first snapshot (local storage, zstd): from `PUT /status
                        {"mode": "active"}` until `GET /backup` shows `basebackup_info`, and from
                        the daemon's "taking the snapshot" log line to its "snapshot of stream
                        ... stored" line; and the daemon's peak RSS (VmRSS polled every 100 ms,
                        and VmHWM).
  snapshot-restore  restores that snapshot: myhoard (`PUT /status {"mode": "restore"}` onto an
                    empty server) until the end of its restoring_basebackup/preparing_backup
                    phases, against `openssl enc -d | zstd -d | mbstream -x` + `mariabackup
                    --prepare` (+ `--move-back`) of the baseline file. Runs `snapshot` first when
                    it was not asked for.
  upload-latency    a small server under a steady insert load with myhoard active: after the
                    first backup, --rotations `FLUSH BINARY LOGS` about 2 s apart, each timed
                    from the FLUSH returning to the closed binlog's object (and its .metadata)
                    appearing in the local storage directory.
  replay            a backup of a small server, then --transactions small transactions,
                    rotated and uploaded; then myhoard restores it onto an empty server (binlog
                    apply phases timed from the daemon's log and its /status/restore phases),
                    and a third server restored from the same snapshot object applies the same
                    binlogs with `mariadb-binlog --start-position=<snapshot position> FILES |
                    mariadb`. Transactions per second of each, checked against the source's
                    table checksum.

Every server binds 127.0.0.1 on a free port and lives, with the storage, under a fresh
directory in --workdir, removed at the end; every server and daemon started (also the servers
myhoard restarted) is stopped by PID at the end, also on failure or Ctrl-C. Builds myhoard in
release. MariaDB only (mariadbd, mariabackup, mbstream, mariadb-binlog, mariadb, zstd, openssl
on PATH). The machine is shared: compare the ratios, not the absolute figures.
"""
import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) or "/usr/sbin/mariadbd"
PASSWORD = "bench"
BENCHES = ("snapshot", "snapshot-restore", "upload-latency", "replay")
WORDS = ("alpha", "beta", "gamma", "delta", "order", "customer", "invoice", "shipped", "pending",
         "warehouse", "Helsinki", "Berlin")


def say(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_bytes(path):
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                pass
    return total


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid, timeout=300):
    """SIGTERM, then SIGKILL after `timeout` seconds; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while alive(pid):
            time.sleep(0.1)


def run_shell(command, what):
    """Runs a bash pipeline (pipefail); returns its wall time."""
    started = time.monotonic()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-3000:]}")
    return elapsed


def row(label, seconds, note=""):
    return f"{label:<62}{seconds:8.1f} s{note}"


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def gtid_seq(gtid_pos, domain=0):
    """The highest sequence number of `domain` in a MariaDB GTID position like `0-21-200017`."""
    best = 0
    for part in (gtid_pos or "").split(","):
        fields = part.strip().split("-")
        if len(fields) == 3 and int(fields[0]) == domain:
            best = max(best, int(fields[2]))
    return best


class Bench:
    """The run's directory, and everything it started."""

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="myhoard-daemon-bench-", dir=args.workdir)
        self.servers = []
        self.daemons = []
        self.results = []
        self.warnings = {}  # daemon log -> its WARN and ERROR lines
        self.myhoard = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                    "release", "myhoard")
        self.snapshot = None  # what `snapshot` left for `snapshot-restore`

    def report(self, lines):
        print("\n" + "\n".join(lines) + "\n", flush=True)
        self.results.extend(lines + [""])

    def cleanup(self):
        for daemon in reversed(self.daemons):
            daemon.stop()
        for server in reversed(self.servers):
            server.stop()
        # Anything else still running from our directory: servers a daemon restarted after we
        # lost track of them, a mariabackup child. By PID, one at a time.
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me and self.work in cmdline(int(entry)):
                stop_pid(int(entry), timeout=120)
        shutil.rmtree(self.work, ignore_errors=True)


class Server:
    """A MariaDB server under `<work>/<name>`, started as `mariadbd --defaults-file=<my.cnf>` (the
    same command line as the daemon's start_command, so that myhoard finds and restarts it)."""

    def __init__(self, bench, name, server_id, buffer_pool="256M", extra=()):
        self.bench = bench
        self.name = name
        self.server_id = server_id
        self.dir = os.path.join(bench.work, name)
        for sub in ("data", "binlog", "relay", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.port = free_port()
        self.cnf = os.path.join(self.dir, "my.cnf")
        self.data = os.path.join(self.dir, "data")
        self.binlog_dir = os.path.join(self.dir, "binlog")
        self.pid_file = os.path.join(self.dir, "mysqld.pid")
        d = self.dir
        lines = [
            "[mysqld]", "user=root", f"datadir={d}/data", f"tmpdir={d}/tmp", f"port={self.port}",
            "bind-address=127.0.0.1", f"socket={d}/mysqld.sock", f"pid-file={d}/mysqld.pid",
            f"log-error={d}/mysqld.err", f"server-id={server_id}", f"log-bin={d}/binlog/binlog",
            f"log-bin-index={d}/binlog/binlog.index", "binlog-format=ROW", "gtid-strict-mode=ON",
            "log-slave-updates=ON", f"relay-log={d}/relay/relay", f"relay-log-index={d}/relay/relay.index",
            "skip-slave-start", "relay-log-recovery=OFF", f"innodb-buffer-pool-size={buffer_pool}",
            "innodb-log-file-size=256M",
        ] + list(extra)
        with open(self.cnf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.argv = [MARIADBD, f"--defaults-file={self.cnf}"]
        self.client = ["mariadb", "--no-defaults", "-uroot", f"-p{PASSWORD}", "-h127.0.0.1", f"-P{self.port}"]
        bench.servers.append(self)

    def initialize(self):
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={self.data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.start()
        subprocess.run(["mariadb", "--no-defaults", "-uroot", f"-S{self.dir}/mysqld.sock", "-e",
                        f"SET PASSWORD FOR root@localhost = PASSWORD('{PASSWORD}'); "
                        f"CREATE OR REPLACE USER root@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
                        "GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;"], check=True)

    def start(self):
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        # Reap it whenever it exits (myhoard stops it to restart it with other options).
        threading.Thread(target=proc.wait, daemon=True).start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            # `ping` succeeds once the server answers, even with access denied.
            if subprocess.run(["mariadb-admin", "--no-defaults", "-uroot", "-h127.0.0.1", f"-P{self.port}",
                               "--connect-timeout=2", "ping"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        raise SystemExit(f"{self.name}: mariadbd did not start; see {self.dir}/mysqld.err")

    def pid(self):
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if self.cnf in cmdline(pid) else None

    def stop(self):
        pid = self.pid()
        if pid:
            stop_pid(pid)

    def sql(self, text, timeout=None):
        proc = subprocess.run(self.client + ["-N", "-B"], input=text, text=True, capture_output=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{self.name}: SQL failed: {proc.stderr.strip()}\n{text[:500]}")
        return proc.stdout.strip()

    def checksum(self, table):
        return self.sql(f"CHECKSUM TABLE {table} EXTENDED").split("\t")[-1]

    def client_defaults_file(self):
        """my.cnf plus a [client] section, as myhoard hands mariabackup the credentials."""
        path = os.path.join(self.dir, "backup-defaults.cnf")
        with open(self.cnf) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text + f"\n[client]\nuser=root\npassword={PASSWORD}\nhost=127.0.0.1\nport={self.port}\n")
        os.chmod(path, 0o600)
        return path


class Daemon:
    """`myhoard run` for `server`, with local storage in `storage` and zstd compression."""

    def __init__(self, bench, server, storage, rotation_interval=300):
        self.bench = bench
        self.server = server
        self.dir = os.path.join(server.dir, "myhoard")
        for sub in ("state", "work"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.http_port = free_port()
        self.log_path = os.path.join(self.dir, "myhoard.log")
        self.config_path = os.path.join(self.dir, "myhoard.json")
        self.storage = storage
        with open(os.path.join(ROOT, "etc", "myhoard.json")) as f:
            config = json.load(f)
        site = config["backup_sites"]["default"]
        site["object_storage"] = {"storage_type": "local", "directory": storage}
        site["compression"] = {"algorithm": "zstd", "level": bench.args.zstd_level,
                               "threads": bench.args.zstd_threads}
        config["backup_settings"]["forced_binlog_rotation_interval"] = rotation_interval
        config["binlog_purge_settings"]["enabled"] = False
        config["http_port"] = self.http_port
        config["server_id"] = server.server_id
        d = server.dir
        config["mysql"] = {
            "binlog_prefix": f"{d}/binlog/binlog",
            "client_params": {"host": "127.0.0.1", "port": server.port, "user": "root", "password": PASSWORD,
                              "require_ssl": False},
            "config_file_name": server.cnf,
            "data_directory": server.data,
            "relay_log_index_file": f"{d}/relay/relay.index",
            "relay_log_prefix": f"{d}/relay/relay",
        }
        config["state_directory"] = os.path.join(self.dir, "state")
        config["temporary_directory"] = os.path.join(self.dir, "work")
        config["start_command"] = server.argv
        for key in ("systemd_service", "systemctl_command", "systemd_env_update_command"):
            config.pop(key, None)
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)
        os.chmod(self.config_path, 0o600)
        self.proc = None
        bench.daemons.append(self)

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.bench.myhoard, "run", "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("GET", "/status")
                return
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise SystemExit(f"myhoard did not start; see {self.log_path}:\n{self.tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.log_path not in self.bench.warnings and os.path.exists(self.log_path):
            self.bench.warnings[self.log_path] = self.problems()

    def api(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise SystemExit(f"{method} {path}: HTTP {err.code}: {err.read().decode(errors='replace')}")

    def backups(self):
        return self.api("GET", "/backup").get("backups") or []

    def wait_for_backup(self, key, timeout=7200, poll=0.1):
        """Waits until the first backup has `key` set; returns (time.time() then, the backup)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            for backup in self.backups():
                if backup.get(key):
                    return time.time(), backup
            time.sleep(poll)
        raise SystemExit(f"no backup with {key} after {timeout} s; see {self.log_path}:\n{self.tail()}")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise SystemExit(f"myhoard exited ({self.proc.returncode}); see {self.log_path}:\n{self.tail()}")

    def events(self):
        """The log as (epoch seconds, level, message)."""
        out = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 4)
                if len(parts) != 5:
                    continue
                try:
                    stamp = datetime.datetime.strptime(parts[0], "%Y-%m-%dT%H:%M:%S.%fZ")
                except ValueError:
                    continue
                out.append((stamp.replace(tzinfo=datetime.timezone.utc).timestamp(), parts[3], parts[4]))
        return out

    def first(self, pattern, after=0.0):
        regex = re.compile(pattern)
        for stamp, _, message in self.events():
            if stamp >= after and regex.search(message):
                return stamp, message
        return None, None

    def last(self, pattern):
        regex = re.compile(pattern)
        found = (None, None)
        for stamp, _, message in self.events():
            if regex.search(message):
                found = (stamp, message)
        return found

    def tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def problems(self):
        """WARN and ERROR lines, for the report."""
        return [f"{level} {message}" for _, level, message in self.events() if level in ("WARN", "ERROR")]

    def restore(self, stream_id, timeout=7200):
        """`PUT /status {"mode": "restore"}`, then polls until the daemon is in `observe`. Returns
        the request time and the first time each /status/restore phase was seen."""
        seen = {}
        deadline = time.monotonic() + 120
        while not any(b.get("stream_id") == stream_id for b in self.backups()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{stream_id} not listed by the restoring daemon; see {self.log_path}")
            time.sleep(0.5)
        started = time.time()
        self.api("PUT", "/status", {"mode": "restore", "site": "default", "stream_id": stream_id})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            now = time.time()
            mode = self.api("GET", "/status").get("mode")
            if mode == "observe":
                seen.setdefault("observe", now)
                return started, seen
            try:
                phase = self.api("GET", "/status/restore").get("phase")
            except SystemExit:
                phase = None
            if phase and phase not in seen:
                seen[phase] = now
                say(f"  restore phase {phase}")
            if phase and (phase.startswith("failed") or phase == "broken_basebackup"):
                raise SystemExit(f"restore failed ({phase}); see {self.log_path}:\n{self.tail()}")
            time.sleep(0.2)
        raise SystemExit(f"restore did not finish in {timeout} s; see {self.log_path}:\n{self.tail()}")


class RssSampler(threading.Thread):
    """Polls a process's VmRSS every 100 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.done = threading.Event()

    def field(self, name):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(name + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def run(self):
        while not self.done.is_set():
            self.peak_kib = max(self.peak_kib, self.field("VmRSS"))
            time.sleep(0.1)

    def finish(self):
        """Stops polling; returns (peak polled VmRSS, VmHWM) in MiB."""
        self.done.set()
        self.join()
        return self.peak_kib / 1024, self.field("VmHWM") / 1024


# --- the big database ------------------------------------------------------------------------


def words_expr(expression):
    return f"ELT(1 + ({expression}) % {len(WORDS)}, " + ", ".join(f"'{w}'" for w in WORDS) + ")"


def insert_rows(table, offset, rows):
    """`rows` rows of ~250 bytes: an id, numbers, an e-mail, a text note of repeated words (very
    compressible), a SHA-256 in hex (half compressible) and 40 random bytes (incompressible)."""
    s = f"(seq + {offset})"
    return (
        f"SET SESSION sql_log_bin = 0; INSERT INTO bench.{table} (id, k, email, note, digest, token, created) "
        f"SELECT {s}, seq % 100000, CONCAT('customer-', {s} % 50000, '@example.com'), "
        f"CONCAT_WS(' ', {words_expr('seq')}, {words_expr('seq DIV 12')}, 'order', {s}, 'status', "
        f"ELT(1 + (seq DIV 144) % 4, 'pending', 'paid', 'shipped', 'refunded'), REPEAT('note ', seq % 17)), "
        f"SHA2({s}, 256), RANDOM_BYTES(40), TIMESTAMP'2026-01-01 00:00:00' + INTERVAL {s} SECOND "
        f"FROM bench.seq_1_to_{rows};"
    )


def load_big(server, size_gb):
    tables = [f"t{i}" for i in range(1, 5)]
    server.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 2; CREATE DATABASE bench; " + " ".join(
        f"CREATE TABLE bench.{t} (id BIGINT PRIMARY KEY, k INT NOT NULL, email VARCHAR(64), note VARCHAR(512), "
        f"digest CHAR(64), token VARBINARY(64), created DATETIME, KEY (k)) ENGINE=InnoDB;" for t in tables))
    target = int(size_gb * 2**30)
    batch = 250_000
    offsets = {t: 0 for t in tables}
    started = time.monotonic()
    round_no = 0

    def data_bytes():
        return tree_bytes(os.path.join(server.data, "bench"))

    while data_bytes() < target:
        # Two loaders at a time (two cores), on different tables.
        pair = tables[(2 * round_no) % 4: (2 * round_no) % 4 + 2]
        procs = []
        for table in pair:
            procs.append(subprocess.Popen(server.client + ["-N"], stdin=subprocess.PIPE, text=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            procs[-1].stdin.write(insert_rows(table, offsets[table], batch))
            procs[-1].stdin.close()
            offsets[table] += batch
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"loading failed: {proc.stderr.read()}")
        round_no += 1
        say(f"  {data_bytes() / 2**30:.2f} GiB of tables after {time.monotonic() - started:.0f} s")
    server.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
    # Let InnoDB write its dirty pages now, not while the snapshots are being timed.
    defaults = server.sql("SELECT @@innodb_io_capacity, @@innodb_io_capacity_max").split("\t")
    server.sql("SET GLOBAL innodb_io_capacity_max = 20000; SET GLOBAL innodb_io_capacity = 10000; "
               "SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001; SET GLOBAL innodb_max_dirty_pages_pct = 0")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        dirty = int(server.sql("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'").split()[-1])
        if dirty < 200:
            break
        time.sleep(2)
    server.sql("SET GLOBAL innodb_max_dirty_pages_pct = 90; SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0; "
               f"SET GLOBAL innodb_io_capacity = {defaults[0]}; SET GLOBAL innodb_io_capacity_max = {defaults[1]}")
    rows = sum(offsets.values())
    say(f"  loaded {rows} rows in {time.monotonic() - started:.0f} s")
    return rows


def warm(path):
    """Reads every file once so that the baseline and myhoard both find them in the page cache."""
    for parent, _, files in os.walk(path):
        for name in files:
            try:
                with open(os.path.join(parent, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


# --- benchmarks --------------------------------------------------------------------------------


def bench_snapshot(bench):
    args = bench.args
    say(f"snapshot: loading a {args.size_gb} GiB database")
    server = Server(bench, "big", 1, buffer_pool="512M")
    server.initialize()
    rows = load_big(server, args.size_gb)
    data_bytes = tree_bytes(server.data)
    warm(server.data)

    say("snapshot: baseline mariabackup | zstd | openssl enc")
    base_dir = os.path.join(bench.work, "baseline")
    os.makedirs(os.path.join(base_dir, "tmp"))
    os.makedirs(os.path.join(base_dir, "lsn"))
    backup_file = os.path.join(base_dir, "backup.xbstream.zst.enc")
    defaults = server.client_defaults_file()
    baseline = run_shell(
        f"mariabackup --defaults-file={defaults} --backup --parallel=1 --stream=xbstream "
        f"--target-dir={base_dir}/tmp --extra-lsndir={base_dir}/lsn 2>{base_dir}/mariabackup.log "
        f"| zstd -{args.zstd_level} -q | openssl enc -aes-128-ctr -pbkdf2 -pass pass:x > {backup_file}",
        "the baseline backup")
    started = time.monotonic()
    with open(backup_file, "rb") as f:
        os.fsync(f.fileno())
    baseline_fsync = time.monotonic() - started
    baseline_bytes = os.path.getsize(backup_file)
    shutil.rmtree(os.path.join(base_dir, "tmp"), ignore_errors=True)

    say("snapshot: myhoard")
    storage = os.path.join(bench.work, "storage")
    daemon = Daemon(bench, server, storage)
    daemon.start()
    sampler = RssSampler(daemon.proc.pid)
    sampler.start()
    requested = time.time()
    daemon.api("PUT", "/status", {"mode": "active"})
    stored_at, backup = daemon.wait_for_backup("basebackup_info")
    peak_rss, hwm = sampler.finish()
    request_time = stored_at - requested
    taking, _ = daemon.first(r"taking the snapshot of stream", after=requested - 1)
    stored, stored_line = daemon.first(r"snapshot of stream .* stored", after=requested - 1)
    log_time = stored - taking if taking and stored else None
    info = backup["basebackup_info"]
    _, backup = daemon.wait_for_backup("completed_at")
    bench.snapshot = {"server": server, "daemon": daemon, "backup": backup, "file": backup_file,
                      "data_bytes": data_bytes, "stored_bytes": info.get("compressed_size") or 0}

    lines = [
        f"== snapshot: {rows} rows, data directory {data_bytes / 1e9:.2f} GB "
        f"(tables {args.size_gb} GiB), zstd level {args.zstd_level}",
        row(f"baseline  mariabackup | zstd -{args.zstd_level} | openssl enc > file", baseline,
            f"   ({baseline_bytes / 1e6:.0f} MB; the file's fsync after it: {baseline_fsync:.1f} s)"),
        row("myhoard   PUT /status active -> GET /backup has basebackup_info", request_time,
            f"   ({bench.snapshot['stored_bytes'] / 1e6:.0f} MB stored, zstd threads {args.zstd_threads})"),
    ]
    if log_time is not None:
        lines.append(row("myhoard   log 'taking the snapshot' -> 'snapshot ... stored'", log_time))
    lines.append(f"ratio myhoard/baseline: {request_time / baseline:.2f} (request to listing)"
                 + (f", {log_time / baseline:.2f} (log lines)" if log_time is not None else "")
                 + f"; against baseline + fsync: {request_time / (baseline + baseline_fsync):.2f}"
                 + "   (target <= 1.15)")
    lines.append(f"myhoard peak RSS: {peak_rss:.1f} MiB (VmRSS every 100 ms), VmHWM {hwm:.1f} MiB"
                 "   (target < 100)")
    bench.report(lines)


def bench_snapshot_restore(bench):
    if bench.snapshot is None:
        bench_snapshot(bench)
    snap = bench.snapshot
    # The source is not needed any more: stop it so that it does not compete for the CPUs.
    snap["daemon"].stop()
    snap["server"].stop()
    stream_id = snap["backup"]["stream_id"]
    backup_file = snap["file"]

    say("snapshot-restore: baseline openssl -d | zstd -d | mbstream -x, --prepare, --move-back")
    target = Server(bench, "restore-baseline", 3, buffer_pool="512M")
    extract = os.path.join(bench.work, "restore-baseline-extract")
    os.makedirs(extract)
    warm(os.path.dirname(backup_file))
    extract_time = run_shell(
        f"openssl enc -d -aes-128-ctr -pbkdf2 -pass pass:x < {backup_file} | zstd -d -q | mbstream -x -C {extract}",
        "the baseline extraction")
    prepare_time = run_shell(
        f"mariabackup --defaults-file={target.cnf} --prepare --target-dir={extract} "
        f"> {target.dir}/prepare.log 2>&1", "the baseline --prepare")
    move_time = run_shell(
        f"mariabackup --defaults-file={target.cnf} --move-back --target-dir={extract} --datadir={target.data} "
        f"> {target.dir}/move-back.log 2>&1", "the baseline --move-back")
    restored_bytes = tree_bytes(target.data)
    shutil.rmtree(extract, ignore_errors=True)
    shutil.rmtree(target.dir, ignore_errors=True)
    baseline = extract_time + prepare_time

    say("snapshot-restore: myhoard")
    server = Server(bench, "restore-myhoard", 2, buffer_pool="512M")
    daemon = Daemon(bench, server, snap["daemon"].storage)
    daemon.start()
    for object_root in (os.path.join(snap["daemon"].storage, "default", stream_id),):
        warm(object_root)
    requested, seen = daemon.restore(stream_id)
    ended, _ = daemon.first(r"restore phase \S+ → RefreshingBinlogs", after=requested - 1)
    began, _ = daemon.first(r"restore phase \S+ → RestoringBasebackup", after=requested - 1)
    request_time = ended - requested if ended else None
    phase_time = ended - began if ended and began else None
    polled = {phase: at - requested for phase, at in seen.items()}

    lines = [
        f"== snapshot-restore: {snap['stored_bytes'] / 1e6:.0f} MB stored, {restored_bytes / 1e9:.2f} GB restored",
        row("baseline  openssl enc -d | zstd -d | mbstream -x", extract_time),
        row("baseline  mariabackup --prepare", prepare_time),
        row("baseline  mariabackup --move-back", move_time),
        row("baseline  extract + prepare", baseline, f"   (+ move-back: {baseline + move_time:.1f} s)"),
    ]
    if request_time is not None:
        lines.append(row("myhoard   PUT restore -> end of restoring_basebackup (log)", request_time,
                         "   (download+extract, prepare, move-back)"))
    if phase_time is not None:
        lines.append(row("myhoard   log '→ RestoringBasebackup' -> '→ RefreshingBinlogs'", phase_time))
    lines.append("myhoard   phases first seen (s after the request): "
                 + ", ".join(f"{phase} {at:.1f}" for phase, at in sorted(polled.items(), key=lambda kv: kv[1])))
    if request_time is not None:
        lines.append(f"ratio myhoard/baseline: {request_time / baseline:.2f} against extract + prepare, "
                     f"{request_time / (baseline + move_time):.2f} against extract + prepare + move-back"
                     "   (target <= 1.15)")
    bench.report(lines)
    daemon.stop()
    server.stop()
    # Free the disk for the benchmarks that follow.
    for path in (server.dir, snap["server"].dir, snap["daemon"].storage, os.path.dirname(backup_file)):
        shutil.rmtree(path, ignore_errors=True)


class InsertLoad(threading.Thread):
    """A steady stream of single-row inserts through one client connection (~rate rows/s)."""

    def __init__(self, server, rate=200):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(server.client + ["-N", "bench"], stdin=subprocess.PIPE, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.rate = rate
        self.rows = 0
        self.done = threading.Event()

    def run(self):
        rng = random.Random(3)
        try:
            while not self.done.is_set():
                text = "".join(
                    f"INSERT INTO load_rows (k, v) VALUES ({rng.randint(0, 10**6)}, "
                    f"'{' '.join(rng.choice(WORDS) for _ in range(6))}');\n" for _ in range(self.rate // 20))
                self.proc.stdin.write(text)
                self.proc.stdin.flush()
                self.rows += self.rate // 20
                time.sleep(0.05)
        except (BrokenPipeError, OSError):
            pass

    def finish(self):
        self.done.set()
        self.join()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


class Control:
    """A persistent client: `run(sql)` returns when the server has answered."""

    def __init__(self, server):
        self.proc = subprocess.Popen(server.client + ["-N", "-B", "-n"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.count = 0

    def run(self, text):
        self.count += 1
        marker = f"done-{self.count}"
        self.proc.stdin.write(f"{text}; SELECT '{marker}';\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("the control client exited")
            if line.strip() == marker:
                return lines
            lines.append(line.rstrip("\n"))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def stored_binlogs(storage, stream_id):
    """Binlog objects of a stream that are in place with their .metadata sidecar."""
    root = os.path.join(storage, "default", stream_id, "binlogs")
    found = set()
    if not os.path.isdir(root):
        return found
    for bucket in os.listdir(root):
        try:
            names = set(os.listdir(os.path.join(root, bucket)))
        except FileNotFoundError:
            continue
        for name in names:
            if re.fullmatch(r"\d+_\d+", name) and name + ".metadata" in names:
                found.add(f"{bucket}/{name}")
    return found


def bench_upload_latency(bench):
    args = bench.args
    say("upload-latency: starting a server and myhoard")
    server = Server(bench, "latency", 11)
    server.initialize()
    server.sql("CREATE DATABASE bench; CREATE TABLE bench.load_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
               "k INT, v VARCHAR(255), t TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB; "
               "INSERT INTO bench.load_rows (k, v) SELECT seq, REPEAT('x', 100) FROM bench.seq_1_to_10000")
    storage = os.path.join(bench.work, "storage-latency")
    daemon = Daemon(bench, server, storage, rotation_interval=3600)
    daemon.start()
    load = InsertLoad(server)
    load.start()
    control = None
    try:
        daemon.api("PUT", "/status", {"mode": "active"})
        say("upload-latency: waiting for the first backup to complete")
        _, backup = daemon.wait_for_backup("completed_at")
        stream_id = backup["stream_id"]
        control = Control(server)
        # Let the uploads that completing the backup caused finish.
        time.sleep(3)
        latencies = []
        names = []
        for i in range(args.rotations):
            before = stored_binlogs(storage, stream_id)
            closing = control.run("SHOW BINARY LOGS")[-1].split("\t")[0]
            control.run("FLUSH BINARY LOGS")
            flushed = time.monotonic()
            deadline = flushed + 300
            while True:
                new = stored_binlogs(storage, stream_id) - before
                if new:
                    latency = time.monotonic() - flushed
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{closing} not uploaded after 300 s; see {daemon.log_path}:\n{daemon.tail()}")
                daemon.check_alive()
                time.sleep(0.01)
            latencies.append(latency)
            names.append(closing)
            say(f"  rotation {i + 1}/{args.rotations}: {closing} stored {latency:.3f} s after the FLUSH")
            time.sleep(max(0.0, flushed + 2.0 - time.monotonic()))
    finally:
        load.finish()
        if control:
            control.close()
    # myhoard's own figures: new binlog seen -> uploaded, and the upload itself.
    events = daemon.events()
    seen_at, upload_seconds, detect = {}, [], []
    for stamp, _, message in events:
        match = re.match(r"new binlog (\S+) ", message)
        if match:
            seen_at.setdefault(match.group(1), stamp)
        match = re.match(r"uploaded (\S+) as \S+ \(.*, ([\d.]+) s\)", message)
        if match and match.group(1) in names:
            upload_seconds.append(float(match.group(2)))
            if match.group(1) in seen_at:
                detect.append(stamp - seen_at[match.group(1)])
    lines = [
        f"== upload-latency: {len(latencies)} rotations ~2 s apart under ~{load.rate} inserts/s "
        f"({load.rows} rows inserted)",
        f"FLUSH BINARY LOGS returned -> object + .metadata in storage: median {statistics.median(latencies):.3f} s, "
        f"p90 {percentile(latencies, 0.9):.3f} s, max {max(latencies):.3f} s   (target median <= 1 s)",
    ]
    if upload_seconds:
        lines.append(f"myhoard log, the upload itself: median {statistics.median(upload_seconds):.3f} s, "
                     f"max {max(upload_seconds):.3f} s; 'new binlog' -> 'uploaded': median "
                     f"{statistics.median(detect):.3f} s" if detect else "")
    lines.append("all: " + " ".join(f"{x:.2f}" for x in latencies))
    bench.report([line for line in lines if line])
    daemon.stop()
    server.stop()


def small_transactions(rng, count, first_id, existing):
    out = ["USE bench;"]
    next_id = first_id
    for _ in range(count):
        if rng.random() < 0.7:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            out.append(f"INSERT INTO tx (id, k, v, n) VALUES ({next_id}, {rng.randint(0, 10**6)}, '{text}', 0);")
            next_id += 1
        else:
            out.append(f"UPDATE tx SET n = n + 1 WHERE id = {rng.randint(1, existing + next_id - first_id)};")
    return "\n".join(out) + "\n", next_id


def bench_replay(bench):
    args = bench.args
    say("replay: source server and its backup")
    source = Server(bench, "replay-source", 21)
    source.initialize()
    source.sql("CREATE DATABASE bench; CREATE TABLE bench.tx (id BIGINT PRIMARY KEY, k INT, v VARCHAR(128), "
               "n INT) ENGINE=InnoDB; INSERT INTO bench.tx SELECT seq, seq, 'seed', 0 FROM bench.seq_1_to_10000")
    storage = os.path.join(bench.work, "storage-replay")
    daemon = Daemon(bench, source, storage)
    daemon.start()
    daemon.api("PUT", "/status", {"mode": "active"})
    _, backup = daemon.wait_for_backup("completed_at")
    stream_id = backup["stream_id"]
    info = backup["basebackup_info"]

    say(f"replay: committing {args.transactions} transactions")
    source.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
    rng = random.Random(11)
    next_id = 10_001
    started = time.monotonic()
    remaining = args.transactions
    while remaining > 0:
        chunk = min(remaining, 50_000)
        text, next_id = small_transactions(rng, chunk, next_id, 10_000)
        source.sql(text)
        remaining -= chunk
    say(f"  committed in {time.monotonic() - started:.0f} s")
    source.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
    daemon.api("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 600}, timeout=700)
    source_gtid = source.sql("SELECT @@gtid_binlog_pos")
    expected = source.checksum("bench.tx")
    transactions = gtid_seq(source_gtid) - gtid_seq(info.get("gtid"))
    with open(os.path.join(source.binlog_dir, "binlog.index")) as f:
        index = [os.path.basename(line.strip()) for line in f if line.strip()]
    first = info["binlog_name"]
    # From the snapshot's binlog through the last closed one (the open one holds nothing since).
    files = [os.path.join(source.binlog_dir, name) for name in index[index.index(first):-1]]
    binlog_bytes = sum(os.path.getsize(f) for f in files)
    daemon.stop()
    source.stop()

    say("replay: myhoard restore")
    target = Server(bench, "replay-myhoard", 22)
    restorer = Daemon(bench, target, storage)
    restorer.start()
    requested, seen = restorer.restore(stream_id)
    apply_start, _ = restorer.first(r"restore phase \S+ → ApplyingBinlogs", after=requested - 1)
    finalizing, _ = restorer.first(r"restore phase \S+ → Finalizing", after=requested - 1)
    completed, _ = restorer.first(r"restore of .* completed", after=requested - 1)
    polled_start = min((at for phase, at in seen.items()
                        if phase in ("applying_binlogs", "waiting_for_apply_to_finish")), default=None)
    polled = seen["observe"] - polled_start if polled_start else None
    log_apply = finalizing - apply_start if finalizing and apply_start else None
    myhoard_sum = target.checksum("bench.tx")
    myhoard_gtid = target.sql("SELECT @@gtid_binlog_pos, @@gtid_slave_pos").replace("\t", ",")
    restorer.stop()
    target.stop()

    def pipe_baseline(name, server_id, settings):
        """`mariadb-binlog | mariadb` onto a server restored from the same snapshot object."""
        say(f"replay: baseline server from the same snapshot object, mariadb-binlog | mariadb ({name})")
        base = Server(bench, f"replay-baseline-{server_id}", server_id)
        extract = os.path.join(bench.work, f"replay-baseline-extract-{server_id}")
        os.makedirs(extract)
        keys = [f"default/{stream_id}/basebackup.xbstream"] + [
            f"default/{stream_id}/basebackup.xbstream.{n:03d}"
            for n in range(2, (info.get("number_of_splits") or 1) + 1)]
        # The snapshot objects' metadata does not name their compression (basebackup_info does).
        algorithm = info.get("compression_algorithm") or "snappy"
        gets = "; ".join(f"{bench.myhoard} storage get --config {daemon.config_path} --compression {algorithm} {key} -"
                         for key in keys)
        run_shell(f"( {gets} ) | mbstream -x -C {extract}", "fetching the snapshot")
        run_shell(f"mariabackup --defaults-file={base.cnf} --prepare --target-dir={extract} > {base.dir}/prepare.log 2>&1",
                  "--prepare")
        run_shell(f"mariabackup --defaults-file={base.cnf} --move-back --target-dir={extract} --datadir={base.data} "
                  f"> {base.dir}/move-back.log 2>&1", "--move-back")
        shutil.rmtree(extract, ignore_errors=True)
        base.start()
        if settings:
            base.sql(settings)
        warm(source.binlog_dir)
        quoted = " ".join(f"'{f}'" for f in files)
        seconds = run_shell(
            f"mariadb-binlog --no-defaults --start-position={info['binlog_position']} {quoted} "
            f"| {' '.join(base.client)} --binary-mode", "mariadb-binlog | mariadb")
        checksum = base.checksum("bench.tx")
        gtid = base.sql("SELECT @@gtid_binlog_pos, @@gtid_slave_pos").replace("\t", ",")
        base.stop()
        return seconds, checksum == expected and gtid_seq(gtid) == gtid_seq(source_gtid), gtid

    # The restore replays with innodb_flush_log_at_trx_commit=2 and sync_binlog=0 (a commit
    # reaches the OS, not the disk): the pipe is measured both with the server's defaults, as
    # an operator would run it, and with those same settings.
    baseline, ok_base, base_gtid = pipe_baseline("server defaults", 23, None)
    equal, ok_equal, equal_gtid = pipe_baseline(
        "flush_log_at_trx_commit=2, sync_binlog=0", 24,
        "SET GLOBAL innodb_flush_log_at_trx_commit = 2; SET GLOBAL sync_binlog = 0")

    ok_myhoard = myhoard_sum == expected and gtid_seq(myhoard_gtid) == gtid_seq(source_gtid)
    measure = log_apply or polled
    lines = [
        f"== replay: {transactions} transactions after the snapshot (source GTID {source_gtid}), "
        f"{len(files)} binlogs, {binlog_bytes / 1e6:.0f} MB",
        row("baseline  mariadb-binlog --start-position FILES | mariadb", baseline,
            f"{transactions / baseline:9.0f} tx/s   (server defaults; data {'matches' if ok_base else 'DIFFERS: ' + base_gtid})"),
        row("baseline  the same, at the restore's flush settings", equal,
            f"{transactions / equal:9.0f} tx/s   (flush_log_at_trx_commit=2, sync_binlog=0; data "
            f"{'matches' if ok_equal else 'DIFFERS: ' + equal_gtid})"),
    ]
    if log_apply:
        lines.append(row("myhoard   log '→ ApplyingBinlogs' -> '→ Finalizing'", log_apply,
                         f"{transactions / log_apply:9.0f} tx/s   (the apply, server already in apply mode)"))
    if polled:
        lines.append(row("myhoard   polled applying_binlogs -> mode observe", polled,
                         f"{transactions / polled:9.0f} tx/s   (includes the final restart)"))
    if completed:
        lines.append(row("myhoard   whole restore: PUT /status restore -> 'completed'", completed - requested))
    lines.append(f"myhoard restored data {'matches' if ok_myhoard else 'DIFFERS: ' + myhoard_gtid}")
    if measure:
        lines.append(f"ratio myhoard/baseline in tx/s: {baseline / measure:.2f} against the server defaults, "
                     f"{equal / measure:.2f} at equal flush settings   (target >= 2)")
    bench.report([line for line in lines if line])


def check_space(bench, selected):
    gb = bench.args.size_gb * 2**30 / 1e9
    need = 3.0  # replay, upload-latency, margins
    if "snapshot" in selected or "snapshot-restore" in selected:
        need += gb * 1.3 + 0.6 + gb * 1.2  # the database, its redo log, two compressed copies
    if "snapshot-restore" in selected:
        need += gb * 2.6  # the baseline's extraction and myhoard's restore
    usage = shutil.disk_usage(bench.work)
    say(f"{usage.free / 1e9:.0f} GB free in {bench.args.workdir}; this run needs about {need:.0f} GB")
    if usage.free / 1e9 < need + 2:
        raise SystemExit(f"not enough free space in {bench.args.workdir}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benches", nargs="+", choices=BENCHES + ("all",), metavar="BENCH")
    parser.add_argument("--size-gb", type=float, default=2.0, help="tables of the snapshot database, GiB")
    parser.add_argument("--rotations", type=int, default=30)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--zstd-level", type=int, default=3)
    parser.add_argument("--zstd-threads", type=int, default=1,
                        help="myhoard's compression threads (the zstd CLI's default is one worker)")
    args = parser.parse_args()
    selected = BENCHES if "all" in args.benches else tuple(b for b in BENCHES if b in args.benches)

    for tool in ("mariabackup", "mbstream", "mariadb-binlog", "mariadb", "mariadb-admin", "mariadb-install-db",
                 "zstd", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH")
    # SIGTERM cleans up like Ctrl-C does.
    def interrupted(*_):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, interrupted)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "myhoard"], cwd=ROOT, check=True)

    bench = Bench(args)
    try:
        check_space(bench, selected)
        for name in selected:
            {"snapshot": bench_snapshot, "upload-latency": bench_upload_latency, "replay": bench_replay,
             "snapshot-restore": bench_snapshot_restore}[name](bench)
        print("\n".join(["", "=== results"] + bench.results), flush=True)
        for daemon in bench.daemons:
            daemon.stop()
        for log_path, problems in bench.warnings.items():
            if problems:
                print(f"warnings/errors in {os.path.relpath(log_path, bench.work)}:")
                for line in problems[:20]:
                    print("  " + line)
    finally:
        say("cleaning up")
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
