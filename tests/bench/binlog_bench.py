#!/usr/bin/env python3
"""Binlog scan benchmark: `myhoard binlog inspect` against the server's own binlog tool and `cat`.

Usage: tests/bench/binlog_bench.py [--dir DIR] [--flavor mariadb|mysql] [--size-mib 1100]
                                   [--repeat 3] [--keep DIR] [--baseline MYHOARD] [--skip-tool]

Needs a set of real binlogs of at least 1 GiB. With --dir, the binlog.0* files in DIR are used;
otherwise a throwaway server of --flavor (MariaDB from PATH, or MySQL 9.7 from
tests/install-db.sh) is started in a temporary directory and loaded until its binlogs reach
--size-mib: a stream of small autocommit and multi-statement transactions (inserts, updates,
deletes) interleaved with bulk transactions of a few thousand rows, as an OLTP server with batch
jobs writes them. With --keep DIR the generated binlogs are moved to DIR for later runs.

Then, in one run and with the files in the page cache (each command runs once first, untimed),
it times, best of --repeat (cat and myhoard in rounds that run each of them once in turn, so
that a slow spell of a shared machine hits them alike; the server tool, at a minute a run,
after them):
  - cat FILES > /dev/null                                  the I/O floor;
  - myhoard binlog inspect FILES                           GTIDs, transactions, every CRC checked;
  - myhoard binlog inspect --transactions FILES            plus one JSON line per transaction;
  - mariadb-binlog FILES | grep -c 'GTID '                 (MySQL: mysqlbinlog | grep -c GTID_NEXT)
and prints MB/s and the ratios against the server tool and cat. The transaction counts of
myhoard and of the server tool must agree. Builds myhoard in release.

With --baseline MYHOARD (another build, say of the previous commit), that binary's two inspect
runs are timed in the same run too, and both outputs must be byte-identical to this build's.
--skip-tool leaves out the server tool, the slowest part.
"""
import argparse
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.environ.get("MYHOARD_TEST_TOOLS", os.path.join(ROOT, ".test-tools"))
MYSQL_BIN = os.path.join(TOOLS, "mysql97", "bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throwaway server in `directory`, binlogs in `directory/binlog`."""

    def __init__(self, flavor, directory):
        self.flavor = flavor
        self.dir = directory
        self.socket = os.path.join(directory, "mysqld.sock")
        self.binlog_dir = os.path.join(directory, "binlog")
        for sub in ("data", "binlog", "tmp", "files"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        common = [
            f"--datadir={directory}/data", f"--tmpdir={directory}/tmp", f"--socket={self.socket}",
            f"--port={free_port()}", "--bind-address=127.0.0.1", f"--pid-file={directory}/mysqld.pid",
            f"--log-error={directory}/mysqld.err", "--server-id=1", "--binlog-format=ROW",
            f"--log-bin={self.binlog_dir}/binlog", f"--log-bin-index={self.binlog_dir}/binlog.index",
            "--max-binlog-size=256M", "--sync-binlog=0", "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=256M", "--user=root",
        ]
        if flavor == "mariadb":
            subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={directory}/data",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.argv = ["mariadbd", "--no-defaults"] + common + ["--gtid-strict-mode=ON"]
            self.client = ["mariadb", "--no-defaults", "-uroot", f"-S{self.socket}"]
        else:
            mysqld = os.path.join(MYSQL_BIN, "mysqld")
            subprocess.run([mysqld, "--user=root", f"--datadir={directory}/data", "--initialize-insecure",
                            "--innodb-redo-log-capacity=64M", f"--log-error={directory}/init.err"], check=True)
            self.argv = [mysqld] + common + [
                "--gtid-mode=ON", "--enforce-gtid-consistency=ON", "--mysqlx=OFF",
                f"--secure-file-priv={directory}/files", "--performance-schema=OFF"]
            self.client = [os.path.join(MYSQL_BIN, "mysql"), "-uroot", f"-S{self.socket}"]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            if subprocess.run(self.client + ["-e", "select 1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        raise SystemExit(f"{flavor} did not start; see {directory}/mysqld.err")

    def sql(self, text):
        subprocess.run(self.client + ["-N"], input=text.encode(), check=True)

    def binlog_bytes(self):
        return sum(os.path.getsize(f) for f in glob.glob(os.path.join(self.binlog_dir, "binlog.0*")))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def bulk_statement(flavor, rng, rows):
    """One transaction inserting `rows` rows of ~300 bytes, then updating some of them."""
    if flavor == "mariadb":
        source = f"FROM seq_1_to_{rows}"
        select = "SELECT seq % 1000, REPEAT(SHA2(seq, 256), 2), RANDOM_BYTES(100)"
    else:
        source = (f"FROM (WITH RECURSIVE s(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM s WHERE seq < {rows}) "
                  "SELECT seq FROM s) AS s")
        select = "SELECT seq % 1000, REPEAT(SHA2(seq, 256), 2), RANDOM_BYTES(100)"
    low = rng.randint(1, 10_000)
    return (f"BEGIN; INSERT INTO bench.big (k, v, payload) {select} {source}; "
            f"UPDATE bench.big SET k = k + 1 WHERE id BETWEEN {low} AND {low + rows // 4}; COMMIT;\n")


def small_statements(rng, count, max_id):
    """`count` lines of small transactions: autocommit inserts and updates, a few deletes and
    multi-statement transactions."""
    words = "alpha beta gamma delta order customer invoice shipped pending paid refund".split()
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))
        roll = rng.random()
        if roll < 0.6:
            out.append(f"INSERT INTO bench.small (k, v, n, t) VALUES ({rng.randint(0, 10**6)}, '{text}', 0, NOW(6));")
        elif roll < 0.85:
            out.append(f"UPDATE bench.small SET n = n + 1, v = '{text}' WHERE id = {rng.randint(1, max_id)};")
        elif roll < 0.9:
            out.append(f"DELETE FROM bench.small WHERE id = {rng.randint(1, max_id)};")
        else:
            out.append(f"BEGIN; INSERT INTO bench.small (k, v, n, t) VALUES (1, '{text}', 1, NOW(6)); "
                       f"UPDATE bench.small SET n = n + 2 WHERE id = {rng.randint(1, max_id)}; "
                       f"INSERT INTO bench.small (k, v, n, t) VALUES (2, '{text}', 2, NOW(6)); COMMIT;")
    return "\n".join(out) + "\n"


def generate(flavor, size_mib, workdir):
    server = Server(flavor, workdir)
    try:
        return fill(server, flavor, size_mib)
    finally:
        # Also when the load fails: the server must not outlive the script.
        server.stop()


def fill(server, flavor, size_mib):
    rng = random.Random(7)
    server.sql("CREATE DATABASE bench; "
               "CREATE TABLE bench.small (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT, v VARCHAR(255), n INT, "
               "t DATETIME(6)) ENGINE=InnoDB; "
               "CREATE TABLE bench.big (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT, v VARCHAR(255), "
               "payload VARBINARY(200)) ENGINE=InnoDB;")
    target = size_mib << 20
    inserted = 1
    started = time.time()
    while server.binlog_bytes() < target:
        # About a third of the bytes from small transactions, the rest from bulk ones.
        batch = "USE bench;\n"
        if flavor == "mysql":
            # The bulk inserts count rows with a recursive CTE, 1000 levels deep by default.
            batch += "SET SESSION cte_max_recursion_depth = 100000;\n"
        batch += small_statements(rng, 20_000, inserted)
        inserted += 12_000
        batch += bulk_statement(flavor, rng, rng.randint(2_000, 8_000))
        batch += bulk_statement(flavor, rng, rng.randint(2_000, 8_000))
        server.sql(batch)
        print(f"  {server.binlog_bytes() / 2**20:.0f} MiB of binlogs after {time.time() - started:.0f} s",
              flush=True)
    server.sql("FLUSH BINARY LOGS;")
    return server.binlog_dir


def timed(argv, shell=False):
    started = time.perf_counter()
    proc = subprocess.run(argv, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, proc.stdout


def best(repeat, argv, shell=False):
    timed(argv, shell)  # warm-up: page cache, binary
    results = [timed(argv, shell) for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def best_interleaved(repeat, commands):
    """Best of `repeat` rounds for each of `commands` (name -> (argv, shell)), every round
    running each command once in turn: on a shared machine a slow spell then hits all of them
    alike rather than whichever ran during it, which keeps their ratios steady."""
    for argv, shell in commands.values():
        timed(argv, shell)  # warm-up: page cache, binary
    results = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (argv, shell) in commands.items():
            results[name].append(timed(argv, shell))
    return {name: min(runs, key=lambda r: r[0]) for name, runs in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="directory of existing binlog.0* files")
    parser.add_argument("--flavor", choices=("mariadb", "mysql"), default="mariadb")
    parser.add_argument("--size-mib", type=int, default=1100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="move generated binlogs here")
    parser.add_argument("--baseline", help="another myhoard binary to time and compare outputs with")
    parser.add_argument("--skip-tool", action="store_true", help="do not time the server's binlog tool")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "myhoard"], cwd=ROOT, check=True)
    myhoard = os.path.join(ROOT, "target", "release", "myhoard")

    workdir = None
    try:
        if args.dir:
            binlog_dir = args.dir
        else:
            workdir = tempfile.mkdtemp(prefix="myhoard-binlog-bench-")
            print(f"generating {args.size_mib} MiB of {args.flavor} binlogs in {workdir} ...", flush=True)
            binlog_dir = generate(args.flavor, args.size_mib, workdir)
        files = sorted(glob.glob(os.path.join(binlog_dir, "binlog.0*")))
        if not files:
            raise SystemExit(f"no binlog.0* files in {binlog_dir}")
        total = sum(os.path.getsize(f) for f in files)
        with open(files[0], "rb") as f:
            head = f.read(200)
        flavor = "mariadb" if b"MariaDB" in head else "mysql"
        if flavor == "mariadb":
            tool = "mariadb-binlog --no-defaults"
            pattern = "'^#[0-9].*GTID [0-9]'"
        else:
            tool = os.path.join(MYSQL_BIN, "mysqlbinlog")
            pattern = "'GTID_NEXT= .[0-9a-f]'"
        quoted = " ".join(f"'{f}'" for f in files)
        print(f"{len(files)} {flavor} binlogs, {total / 1e6:.0f} MB; best of {args.repeat} (page cache warm)",
              flush=True)

        commands = {
            "cat": (f"cat {quoted} > /dev/null", True),
            "inspect": ([myhoard, "binlog", "inspect"] + files, False),
            "verbose": (f"{myhoard} binlog inspect --transactions {quoted} > /dev/null", True),
        }
        if args.baseline:
            commands["baseline"] = ([args.baseline, "binlog", "inspect"] + files, False)
            commands["baseline_verbose"] = (
                f"{args.baseline} binlog inspect --transactions {quoted} > /dev/null", True)
        timings = best_interleaved(args.repeat, commands)
        cat_time, _ = timings["cat"]
        inspect_time, out = timings["inspect"]
        transactions = sum(json.loads(line)["transactions"] for line in out.decode().splitlines())
        gtids = transactions - sum(json.loads(line)["anonymous_transactions"] for line in out.decode().splitlines())
        verbose_time, _ = timings["verbose"]
        baseline_times = None
        if args.baseline:
            baseline_time, baseline_out = timings["baseline"]
            baseline_verbose_time, _ = timings["baseline_verbose"]
            baseline_times = (baseline_time, baseline_verbose_time)
            # Compared outside the timings: reading a pipe of transaction lines costs more than
            # writing them to /dev/null.
            _, verbose_out = timed([myhoard, "binlog", "inspect", "--transactions"] + files)
            _, baseline_verbose_out = timed([args.baseline, "binlog", "inspect", "--transactions"] + files)
            identical = baseline_out == out and baseline_verbose_out == verbose_out
        if args.skip_tool:
            tool_time, tool_gtids = None, gtids
        else:
            tool_time, tool_out = best(args.repeat, f"{tool} {quoted} | grep -c {pattern}", shell=True)
            tool_gtids = int(tool_out.decode().strip() or 0)
        tool_name = os.path.basename(tool.split()[0])

        def row(label, seconds):
            speed = total / seconds / 1e6
            versus_tool = f"{tool_time / seconds:>9.1f}x" if tool_time else f"{'-':>10}"
            print(f"{label:<44}{seconds:>8.2f} s{speed:>10.0f} MB/s{versus_tool}{seconds / cat_time:>10.2f}")

        print(f"\n{'':<44}{'time':>10}{'speed':>15}{'vs tool':>10}{'vs cat':>10}")
        row("cat > /dev/null", cat_time)
        row("myhoard binlog inspect", inspect_time)
        row("myhoard binlog inspect --transactions", verbose_time)
        if baseline_times:
            row("baseline binlog inspect", baseline_times[0])
            row("baseline binlog inspect --transactions", baseline_times[1])
        if tool_time:
            row(f"{tool_name} | grep GTIDs", tool_time)
            print(f"\ntransactions: myhoard {transactions} ({gtids} with a GTID), {tool_name} {tool_gtids} GTID events")
        else:
            print(f"\ntransactions: myhoard {transactions} ({gtids} with a GTID)")
        vs_cat = inspect_time / cat_time
        speedup = f"{tool_time / inspect_time:.1f}x the server tool (target >= 5x) and " if tool_time else ""
        print(f"myhoard is {speedup}{vs_cat:.2f}x cat's time (target <= 2x)")
        if baseline_times:
            print(f"baseline is {baseline_times[0] / cat_time:.2f}x cat's time; outputs "
                  f"{'byte-identical' if identical else 'DIFFER'}")
        if gtids != tool_gtids:
            raise SystemExit("transaction counts disagree")
        if baseline_times and not identical:
            raise SystemExit("the baseline's output differs")
        if args.keep and workdir:
            os.makedirs(args.keep, exist_ok=True)
            for f in files:
                shutil.move(f, args.keep)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
