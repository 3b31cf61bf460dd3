#!/usr/bin/env python3
"""Fills a migrated hookgauge store with synthetic history, written directly
with SQLite as the store's schema defines them, for the benchmark
(scripts/bench; bench/hookbench):

--events N (scenario "startup"): N events spread over the last 90 days across
50 applications: 45 % commits (each with its lead-time observation), 45 %
deploys, 10 % failures (resolved, with their time to restore).

--deliveries N (shape S5, growth): N accepted Pelorus deploytime deliveries
of S2's shape (50 applications app-00..app-49, namespace "bench", random
image digests), spread over the 90 days before the last hour: each a ledger
row (as the server writes one) and its deploy.

Usage: fill_store.py --db DATA_DIR/hookgauge.db --events 1000000
       fill_store.py --db DATA_DIR/hookgauge.db --deliveries 1000000
"""

import argparse
import hashlib
import json
import os
import sqlite3
import time


def hex_of(kind, n, length):
    return hashlib.sha256(f"{kind}-{n}".encode()).hexdigest()[:length]


def fill_deliveries(db, count, apps):
    now = int(time.time())
    span = 90 * 86400
    first = now - 3600 - span
    width = len(str(apps - 1))
    nonce = os.urandom(8).hex()
    headers = json.dumps({
        "x-hub-signature-256": "[redacted]", "x-pelorus-event": "deploytime", "accept": "*/*",
        "content-length": "0", "content-type": "application/json", "host": "127.0.0.1",
        "user-agent": "Pelorus-Webhook/bench",
    })

    def rows():
        for n in range(count):
            app = "app-%0*d" % (width, n % apps)
            image = "sha256:" + hashlib.sha256(f"{nonce}:{n}".encode()).hexdigest()
            at = first + n * span // count
            body = json.dumps({"app": app, "image_sha": image, "namespace": "bench", "timestamp": at},
                              separators=(",", ":"))
            delivery = hashlib.sha256(f"fill-{nonce}-{n}".encode()).hexdigest()[:32]
            yield app, image, at, body, delivery

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    batch = []
    with conn:
        for app, image, at, body, delivery in rows():
            batch.append((app, image, at, body, delivery))
            if len(batch) >= 50000:
                write_deliveries(conn, batch, headers)
                batch.clear()
        write_deliveries(conn, batch, headers)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"{count} deliveries, {count} deploys")


def write_deliveries(conn, batch, headers):
    conn.executemany(
        "INSERT INTO deliveries (delivery_id, source, event, received_at_ms, outcome, reason, detail, "
        "event_keys, authenticated, body, headers, apps, state) "
        "VALUES (?, 'pelorus', 'deploytime', ?, 'accepted', NULL, 'deploy recorded', ?, 1, ?, ?, ?, 'done')",
        (
            (delivery, at * 1000 + 60000, json.dumps([f"deploy/{app}/bench/{image}/{at}"]), body.encode(),
             headers, json.dumps([app]))
            for app, image, at, body, delivery in batch
        ),
    )
    conn.executemany(
        "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id) "
        "VALUES (?, 'bench', ?, ?, '', '', ?)",
        ((app, at, image, delivery) for app, image, at, body, delivery in batch),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--events", type=int)
    parser.add_argument("--deliveries", type=int)
    parser.add_argument("--apps", type=int, default=50)
    args = parser.parse_args()
    if (args.events is None) == (args.deliveries is None):
        parser.error("give --events or --deliveries")
    if args.deliveries is not None:
        fill_deliveries(args.db, args.deliveries, args.apps)
        return

    apps = args.apps
    now = int(time.time())
    span = 90 * 86400
    commits = int(args.events * 0.45)
    deploys = int(args.events * 0.45)
    failures = args.events - commits - deploys

    conn = sqlite3.connect(args.db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        conn.executemany(
            "INSERT INTO commits (app, commit_sha, image_sha, namespace, commit_link, time, delivery_id) "
            "VALUES (?, ?, ?, ?, '', ?, ?)",
            (
                (f"app-{n % apps}", hex_of("c", n, 40), "sha256:" + hex_of("i", n, 64), "prod",
                 now - span + n * span // commits, f"fill-c-{n}")
                for n in range(commits)
            ),
        )
        conn.executemany(
            "INSERT INTO observations (kind, app, subject, seconds) VALUES ('lead_time', ?, ?, ?)",
            ((f"app-{n % apps}", hex_of("c", n, 40), 600 + n % 86400) for n in range(commits)),
        )
        conn.executemany(
            "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id) "
            "VALUES (?, 'prod', ?, ?, ?, 'production', ?)",
            (
                (f"app-{n % apps}", now - span + n * span // deploys, "sha256:" + hex_of("i", n, 64),
                 hex_of("c", n, 40), f"fill-d-{n}")
                for n in range(deploys)
            ),
        )
        conn.executemany(
            "INSERT INTO failures (app, issue_number, created, created_delivery, resolved, resolved_delivery) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                (f"app-{n % apps}", f"INC-{n}", now - span + n * span // max(failures, 1),
                 f"fill-f-{n}", now - span + n * span // max(failures, 1) + 3600, f"fill-r-{n}")
                for n in range(failures)
            ),
        )
        conn.executemany(
            "INSERT INTO observations (kind, app, subject, seconds) VALUES ('time_to_restore', ?, ?, 3600)",
            ((f"app-{n % apps}", f"INC-{n}") for n in range(failures)),
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"{commits} commits, {deploys} deploys, {failures} failures")


if __name__ == "__main__":
    main()
