#!/usr/bin/env python3
"""Fills a migrated hookgauge store with synthetic history for the start-up
benchmark (scripts/bench, scenario "startup"): EVENTS events spread over the
last 90 days across 50 applications — 45 % commits (each with its lead-time
observation), 45 % deploys, 10 % failures (resolved, with their time to
restore) — written directly with SQLite, as the store's schema defines them.

Usage: fill_store.py --db DATA_DIR/hookgauge.db --events 1000000
"""

import argparse
import hashlib
import sqlite3
import time


def hex_of(kind, n, length):
    return hashlib.sha256(f"{kind}-{n}".encode()).hexdigest()[:length]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()

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
                (f"app-{n % 50}", hex_of("c", n, 40), "sha256:" + hex_of("i", n, 64), "prod",
                 now - span + n * span // commits, f"fill-c-{n}")
                for n in range(commits)
            ),
        )
        conn.executemany(
            "INSERT INTO observations (kind, app, subject, seconds) VALUES ('lead_time', ?, ?, ?)",
            ((f"app-{n % 50}", hex_of("c", n, 40), 600 + n % 86400) for n in range(commits)),
        )
        conn.executemany(
            "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id) "
            "VALUES (?, 'prod', ?, ?, ?, 'production', ?)",
            (
                (f"app-{n % 50}", now - span + n * span // deploys, "sha256:" + hex_of("i", n, 64),
                 hex_of("c", n, 40), f"fill-d-{n}")
                for n in range(deploys)
            ),
        )
        conn.executemany(
            "INSERT INTO failures (app, issue_number, created, created_delivery, resolved, resolved_delivery) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                (f"app-{n % 50}", f"INC-{n}", now - span + n * span // max(failures, 1),
                 f"fill-f-{n}", now - span + n * span // max(failures, 1) + 3600, f"fill-r-{n}")
                for n in range(failures)
            ),
        )
        conn.executemany(
            "INSERT INTO observations (kind, app, subject, seconds) VALUES ('time_to_restore', ?, ?, 3600)",
            ((f"app-{n % 50}", f"INC-{n}") for n in range(failures)),
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"{commits} commits, {deploys} deploys, {failures} failures")


if __name__ == "__main__":
    main()
