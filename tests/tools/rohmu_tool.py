#!/usr/bin/env python3
"""Stores and fetches objects with the real rohmu package, the way Python MyHoard does.

Used by the compatibility tests: objects written here must be readable by `myhoard storage get`,
and objects written by `myhoard storage put` must be readable here, byte for byte.

  rohmu_tool.py put --dir D --key K --input F --algorithm A [--level N] [--public-key PEM]
  rohmu_tool.py get --dir D --key K --output F [--private-key PEM]
  rohmu_tool.py encode --input F --output F --algorithm A [--level N] [--threads N] [--public-key PEM]
  rohmu_tool.py decode --input F --output F --algorithm A [--private-key PEM]

`put` stores through rohmu's local storage with MyHoard's `json` metadata; `get` reads the
algorithm from that metadata. Without a key the object is stored unencrypted. `encode`/`decode`
run rohmu's pipeline file to file (the benchmark uses them).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

from rohmu import rohmufile
from rohmu.object_storage.local import LocalTransfer

KEY_ID = "myhoard-test"


def read_key(path):
    if not path:
        return None
    with open(path, encoding="ascii") as f:
        return f.read()


def encode(input_path, output_fp, algorithm, level, threads, public_key):
    with open(input_path, "rb") as input_fp:
        if algorithm == "none" and not public_key:
            # rohmu stores such objects as they are; its write_file would close output_fp here.
            shutil.copyfileobj(input_fp, output_fp)
            return
        return rohmufile.write_file(
            input_obj=input_fp,
            output_obj=output_fp,
            compression_algorithm=None if algorithm == "none" else algorithm,
            compression_level=level,
            compression_threads=threads,
            rsa_public_key=public_key,
        )


def decode(input_fp, size, output_path, algorithm, private_key):
    """Pushes the object through rohmu's sink pipeline, as MyHoard restores binlogs."""
    metadata = {}
    if algorithm != "none":
        metadata["compression-algorithm"] = algorithm
    if private_key:
        metadata["encryption-key-id"] = KEY_ID
    with open(output_path, "wb") as output_fp:
        sink = rohmufile.create_sink_pipeline(
            output=output_fp,
            file_size=size,
            metadata=metadata,
            key_lookup=lambda key_id: private_key if key_id == KEY_ID else None,
            throttle_time=0,
        )
        while True:
            data = input_fp.read(1024 * 1024)
            if not data:
                break
            sink.write(data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["put", "get", "encode", "decode"])
    parser.add_argument("--dir")
    parser.add_argument("--key")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--algorithm", default="snappy")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--public-key")
    parser.add_argument("--private-key")
    args = parser.parse_args()

    if args.command == "encode":
        with open(args.output, "wb") as output_fp:
            encode(args.input, output_fp, args.algorithm, args.level, args.threads, read_key(args.public_key))
    elif args.command == "decode":
        with open(args.input, "rb") as input_fp:
            decode(input_fp, os.path.getsize(args.input), args.output, args.algorithm, read_key(args.private_key))
    elif args.command == "put":
        storage = LocalTransfer(directory=args.dir)
        public_key = read_key(args.public_key)
        with tempfile.TemporaryFile(dir=args.dir) as encoded:
            encode(args.input, encoded, args.algorithm, args.level, args.threads, public_key)
            encoded.seek(0)
            info = {"compression_algorithm": args.algorithm, "file_size": os.path.getsize(args.input)}
            if not public_key:
                # MyHoard always encrypts; ours records when an object is not.
                info["encrypted"] = False
            storage.store_file_object(args.key, encoded, metadata={"json": json.dumps(info)})
    elif args.command == "get":
        storage = LocalTransfer(directory=args.dir)
        info = json.loads(storage.get_metadata_for_key(args.key)["json"])
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(args.output))) as encoded:
            storage.get_contents_to_fileobj(args.key, encoded)
            size = encoded.tell()
            encoded.seek(0)
            private_key = read_key(args.private_key) if info.get("encrypted", True) else None
            decode(encoded, size, args.output, info["compression_algorithm"], private_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
