#!/usr/bin/env python3
"""Pipeline benchmark: myhoard against rohmu and the zstd CLI, measured in one run.

Usage: tests/bench/pipeline_bench.py [--size-mib 512] [--repeat 2] [--algorithms zstd,snappy,lzma]

Generates InnoDB-like data (16 KiB pages of text and numeric rows, page headers, some
incompressible bytes), then times, for each algorithm and thread count:
  - myhoard compress+encrypt (`myhoard storage put` into local storage) and
    decrypt+decompress (`myhoard storage get` to a file);
  - rohmu doing the same work (rohmu's write_file/read_file, same algorithm, level, threads);
  - for zstd, the `zstd` CLI alone (`zstd -L -T<threads>` and `zstd -d`), the compression-only limit.
It prints MB/s (of uncompressed data), peak RSS of each process, and ratios against the
baselines measured in the same run. The best of --repeat rounds counts, since the machine is
shared; a round runs each command of a case once, in turn, so that a slow spell hits myhoard and
the baselines alike.
Needs tests/install-test-deps.sh to have run (rohmu venv, zstd CLI, GNU time); builds myhoard
in release.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = os.environ.get("MYHOARD_TEST_TOOLS", os.path.join(ROOT, ".test-tools"))
PYTHON = os.path.join(TOOLS, "venv", "bin", "python")
ROHMU_TOOL = os.path.join(ROOT, "tests", "tools", "rohmu_tool.py")
GNU_TIME = "/usr/bin/time"
PAGE = 16 * 1024
WORDS = (
    "alpha beta gamma delta order customer invoice shipped pending paid refund warehouse "
    "Helsinki Berlin Lisbon product widget gadget premium basic note comment status active "
    "inactive archived user email example com street avenue road city country"
).split()


def make_page(rng, page_no):
    """One 16 KiB page: a 38-byte header, rows of text and numbers, free space, a trailer."""
    header = page_no.to_bytes(4, "big") + rng.randbytes(8) + (17855).to_bytes(2, "big") + bytes(24)
    rows = []
    size = len(header) + 8
    row_id = page_no * 100
    # Pages are 60-95% full, as B-tree pages are after splits.
    fill = int(PAGE * rng.uniform(0.6, 0.95))
    while size < fill:
        row_id += 1
        if rng.random() < 0.08:
            # Some columns hold hashes, UUIDs or compressed blobs: incompressible.
            body = rng.randbytes(rng.randint(16, 200))
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
            body = f"{row_id}\t{rng.randint(0, 10**9)}\t{rng.random() * 1000:.2f}\t{text}\t2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}".encode()
        row = len(body).to_bytes(2, "big") + body
        rows.append(row)
        size += len(row)
    body = header + b"".join(rows)
    body = body[: PAGE - 8]
    return body + bytes(PAGE - 8 - len(body)) + rng.randbytes(8)


def generate(path, size_mib):
    rng = random.Random(20261125)
    templates = [make_page(rng, n) for n in range(2048)]
    pages = size_mib * 1024 * 1024 // PAGE
    with open(path, "wb") as f:
        for n in range(pages):
            page = bytearray(templates[rng.randrange(len(templates))])
            page[0:4] = n.to_bytes(4, "big")
            page[4:12] = rng.randbytes(8)
            f.write(page)


def run(argv):
    """Runs a command under GNU time; returns (seconds, peak RSS in MiB).

    GNU time measures the command alone: a child forked from this Python process would count
    Python's own pages in its peak RSS until it execs.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.monotonic()
        proc = subprocess.run([GNU_TIME, "-o", report.name, "-f", "%M"] + argv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"command failed: {' '.join(argv)}\n{proc.stderr.decode(errors='replace')}")
        peak_kib = int(report.read().split()[-1])
    return elapsed, peak_kib / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--algorithms", default="zstd,snappy,lzma")
    # tmpfs by default: the figures are about the pipeline's CPU work, and on a shared disk the
    # fsync that myhoard's local storage does (and rohmu and the zstd CLI do not) would dominate.
    parser.add_argument("--workdir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    args = parser.parse_args()

    for tool in (PYTHON, shutil.which("zstd"), GNU_TIME):
        if not tool or not os.path.exists(tool):
            raise SystemExit("missing tools: run tests/install-test-deps.sh first")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    myhoard = os.path.join(ROOT, "target", "release", "myhoard")

    work = tempfile.mkdtemp(prefix="myhoard-bench-", dir=args.workdir)
    try:
        data = os.path.join(work, "data")
        print(f"generating {args.size_mib} MiB of InnoDB-like pages ...", flush=True)
        generate(data, args.size_mib)
        megabytes = os.path.getsize(data) / 1e6

        subprocess.run(["openssl", "genrsa", "-out", os.path.join(work, "private.pem"), "3072"],
                       check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["openssl", "rsa", "-in", os.path.join(work, "private.pem"), "-pubout",
                        "-out", os.path.join(work, "public.pem")], check=True, stderr=subprocess.DEVNULL)
        with open(os.path.join(work, "private.pem")) as f:
            private_pem = f.read()
        with open(os.path.join(work, "public.pem")) as f:
            public_pem = f.read()

        with open(os.path.join(ROOT, "etc", "myhoard.json")) as f:
            config = json.load(f)
        site = config["backup_sites"][next(iter(config["backup_sites"]))]
        site["object_storage"] = {"storage_type": "local", "directory": os.path.join(work, "storage")}
        site["encryption_keys"] = {"public": public_pem, "private": private_pem}
        site["compression"] = {"algorithm": "snappy"}
        config["backup_sites"] = {"bench": site}
        config["backup_settings"]["upload_site"] = "bench"
        config_path = os.path.join(work, "myhoard.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        os.chmod(config_path, 0o600)

        out = os.path.join(work, "out")
        encoded = os.path.join(work, "encoded")
        cases = []
        for algorithm in args.algorithms.split(","):
            if algorithm == "zstd":
                cases += [("zstd", 1, 1), ("zstd", 1, 2)]
            elif algorithm == "snappy":
                # rohmu's snappy is single-threaded whatever its compression_threads say.
                cases += [("snappy", 0, 0), ("snappy", 0, 2)]
            else:
                cases.append((algorithm, 0, 0))

        rows = []
        for algorithm, level, threads in cases:
            label = f"{algorithm} level {level} threads {threads}"
            print(f"measuring {label} ...", flush=True)
            key = f"bench/{algorithm}-{threads}"
            zst = os.path.join(work, "data.zst")
            # One round runs every command once, each decode right after its encode: a slow
            # spell of a shared machine then hits myhoard and its baselines alike.
            commands = {
                "put": lambda: run([myhoard, "storage", "put", "--config", config_path,
                                    "--compression", algorithm, "--level", str(level),
                                    "--threads", str(threads), data, key]),
                "rohmu_put": lambda: run([PYTHON, ROHMU_TOOL, "encode", "--input", data, "--output", encoded,
                                          "--algorithm", algorithm, "--level", str(level),
                                          "--threads", str(threads), "--public-key",
                                          os.path.join(work, "public.pem")]),
                "get": lambda: run([myhoard, "storage", "get", "--config", config_path, key, out]),
                "rohmu_get": lambda: run([PYTHON, ROHMU_TOOL, "decode", "--input", encoded, "--output", out,
                                          "--algorithm", algorithm, "--private-key",
                                          os.path.join(work, "private.pem")]),
            }
            if algorithm == "zstd":
                commands["cli_put"] = lambda: run(["zstd", "-q", "-f", f"-{level}", f"-T{max(threads, 1)}",
                                                   data, "-o", zst])
                commands["cli_get"] = lambda: run(["zstd", "-q", "-f", "-d", zst, "-o", out])
            timings = {name: [] for name in commands}
            for _ in range(args.repeat):
                for name, command in commands.items():
                    timings[name].append(command())
                    if name == "get" and subprocess.run(["cmp", "-s", data, out]).returncode != 0:
                        raise SystemExit(f"myhoard round trip differs for {label}")
            row = {"label": label}
            row.update({name: min(results, key=lambda r: r[0]) for name, results in timings.items()})
            rows.append(row)

        print(f"\ninput: {megabytes:.0f} MB of InnoDB-like pages in {work}; MB/s of uncompressed data;"
              f" best of {args.repeat}")
        print(f"{'case':<26}{'stage':<22}{'myhoard':>10}{'rohmu':>10}{'zstd CLI':>10}{'x rohmu':>9}{'x CLI':>8}{'RSS MiB':>9}")
        for row in rows:
            for stage, mine, theirs, cli in (
                ("compress+encrypt", row["put"], row["rohmu_put"], row.get("cli_put")),
                ("decrypt+decompress", row["get"], row["rohmu_get"], row.get("cli_get")),
            ):
                speed = megabytes / mine[0]
                rohmu_speed = megabytes / theirs[0]
                cli_speed = megabytes / cli[0] if cli else None
                print(f"{row['label']:<26}{stage:<22}{speed:>10.0f}{rohmu_speed:>10.0f}"
                      f"{(f'{cli_speed:.0f}' if cli else '-'):>10}{speed / rohmu_speed:>9.2f}"
                      f"{(f'{speed / cli_speed:.2f}' if cli else '-'):>8}{mine[1]:>9.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
