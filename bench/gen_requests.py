#!/usr/bin/env python3
"""Pre-generate signed, unique Pelorus `deploytime` deliveries for scripts/bench.

wrk's Lua cannot compute HMAC-SHA256, so every request body and its signature
are computed here once and written to a pool file that bench/webhook.lua reads.

Pool file format: one delivery per line, every line the same length so that a
wrk thread can seek straight to the start of its own slice:

    <64 lowercase hex: HMAC-SHA256(secret, body)> <SP> <body> <LF>

The body is the exact byte string that is sent and signed:

    {"app":"bench","image_sha":"sha256:<64 hex>","namespace":"bench","timestamp":<now>}

Each image_sha is the SHA-256 of a per-pool random nonce and the line number,
so every delivery in a pool is distinct (a distinct delivery id for hookgauge).
The timestamp is "now" (epoch seconds) at generation time.

Usage: bench/gen_requests.py --count N --secret S --out FILE
Prints "<count> <line length>" on stdout when done.
"""

import argparse
import hashlib
import hmac
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="number of deliveries")
    parser.add_argument("--secret", required=True, help="HMAC secret shared with hookgauge")
    parser.add_argument("--out", required=True, help="pool file to write")
    parser.add_argument("--app", default="bench")
    parser.add_argument("--namespace", default="bench")
    args = parser.parse_args()
    if args.count <= 0:
        parser.error("--count must be positive")

    now = int(time.time())
    nonce = os.urandom(16).hex().encode()
    # The body template; only image_sha varies between lines, so all lines
    # have the same length (asserted below).
    head = ('{"app":"%s","image_sha":"sha256:' % args.app).encode()
    tail = ('","namespace":"%s","timestamp":%d}' % (args.namespace, now)).encode()
    # HMAC keyed once; each line copies the keyed state (much faster than
    # re-keying 600k times).
    keyed = hmac.new(args.secret.encode(), digestmod=hashlib.sha256)
    sha256 = hashlib.sha256

    line_len = None
    chunk = []
    with open(args.out, "wb") as out:
        for i in range(args.count):
            image = sha256(b"%s:%d" % (nonce, i)).hexdigest().encode()
            body = head + image + tail
            mac = keyed.copy()
            mac.update(body)
            line = mac.hexdigest().encode() + b" " + body + b"\n"
            if line_len is None:
                line_len = len(line)
            elif len(line) != line_len:
                print("gen_requests: line %d has a different length" % i, file=sys.stderr)
                return 1
            chunk.append(line)
            if len(chunk) >= 10000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))

    print(args.count, line_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())
