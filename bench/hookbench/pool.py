"""Pools of signed, unique Pelorus `deploytime` deliveries for wrk.

wrk's Lua cannot compute HMAC-SHA256, so every request body and its
signature are computed here once and written to a pool file that
bench/webhook.lua reads. One delivery per line, every line the same length
so that a wrk thread can seek straight to the start of its own slice:

    <64 lowercase hex: HMAC-SHA256(secret, body)> <SP> <body> <LF>

The body is the exact byte string that is sent and signed:

    {"app":"<app>","image_sha":"sha256:<64 hex>","namespace":"<ns>","timestamp":<t>}

The app and namespace of each line follow the shape (bench/hookbench/shapes.py);
each image_sha is the SHA-256 of a per-pool random nonce and the line number,
so every delivery in a pool is distinct (a distinct delivery id for hookgauge).
The timestamp is "now" (S1) or "now - 60 s" (the other shapes) at generation time.

As a program (used for the soak's next pools, in the background):
    python3 -m hookbench.pool --shape S2 --count N --secret S --out FILE
prints "<count> <line length>".
"""

import argparse
import hashlib
import hmac
import os
import sys
import time

from .shapes import SHAPES


def generate(path, count, secret, shape, apps=None):
    """Writes `count` deliveries of `shape` to `path`; returns the line length.
    `apps` overrides the shape's number of applications (tiny fills)."""
    if count <= 0:
        raise ValueError("count must be positive")
    now = int(time.time())
    timestamp = now - 60 if shape.fresh_timestamps else now
    nonce = os.urandom(16).hex().encode()
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    sha256 = hashlib.sha256
    if apps is not None:
        from dataclasses import replace
        shape = replace(shape, apps=apps)
    tail = ('","namespace":"%s","timestamp":%d}')
    line_len = None
    chunk = []
    single = shape.apps == 1 and shape.namespaces == 1
    if single:
        head = b'{"app":"bench","image_sha":"sha256:'
        tail_bytes = (tail % ("bench", timestamp)).encode()
    with open(path, "wb") as out:
        for i in range(count):
            if not single:
                app, namespace = shape.app_and_namespace(i)
                head = ('{"app":"%s","image_sha":"sha256:' % app).encode()
                tail_bytes = (tail % (namespace, timestamp)).encode()
            body = head + sha256(b"%s:%d" % (nonce, i)).hexdigest().encode() + tail_bytes
            mac = keyed.copy()
            mac.update(body)
            line = mac.hexdigest().encode() + b" " + body + b"\n"
            if line_len is None:
                line_len = len(line)
            elif len(line) != line_len:
                raise RuntimeError("pool line %d has a different length" % i)
            chunk.append(line)
            if len(chunk) >= 10000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
    return line_len


class Pool:
    """A pool file and the part of it already handed out: runs against one
    server take disjoint ranges, so that every delivery they send is new."""

    def __init__(self, path, count, line_len):
        self.path, self.count, self.line_len = path, count, line_len
        self.cursor = 0

    def take(self, count):
        """(first, count) of the next `count` unused lines, or of the rest."""
        count = min(count, self.count - self.cursor)
        if count <= 0:
            raise RuntimeError("pool %s used up" % self.path)
        first = self.cursor
        self.cursor += count
        return first, count

    def whole(self):
        return 0, self.count


def main():
    parser = argparse.ArgumentParser(description="Writes a pool of signed unique deliveries.")
    parser.add_argument("--shape", default="S1", choices=sorted(SHAPES))
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--apps", type=int, help="override the shape's number of applications")
    args = parser.parse_args()
    if args.count <= 0:
        parser.error("--count must be positive")
    line_len = generate(args.out, args.count, args.secret, SHAPES[args.shape], args.apps)
    print(args.count, line_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
