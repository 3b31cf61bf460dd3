"""The shapes of the benchmark's traffic: which applications, namespaces and
timestamps the signed deliveries carry. Data only; bench/hookbench/pool.py
writes deliveries of a shape, the scenarios decide what to run on it.

  S1  one app, random digests, one timestamp (today's): the old benchmark
  S2  50 apps, random sha256 image digests, fresh timestamps (now - 60 s)
  S3  100k series with 100k distinct apps (one deploy_timestamp series each)
  S4  10k apps x 10 namespaces (100k series)
  S5  growth: S2's traffic against a store pre-filled with 1M deliveries

Every delivery has its own random image digest, so every delivery is a new
deploy_timestamp series. S3 and S4 first fill exactly `series` deliveries
(one per app, resp. per app and namespace) and are measured on that store.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    apps: int  # distinct applications the deliveries cycle through
    namespaces: int  # distinct namespaces per application (1: "bench")
    fresh_timestamps: bool  # now - 60 s instead of one timestamp of today
    kind: str  # "fresh": a fresh server per run; "series": filled first; "growth": pre-filled store

    def app_and_namespace(self, index):
        """The app and namespace of the index-th delivery of a pool. In a
        pool of apps x namespaces deliveries from index 0, every (app,
        namespace) pair occurs exactly once. Names have a fixed width, so
        every line of a pool has the same length."""
        if self.apps == 1 and self.namespaces == 1:
            return "bench", "bench"
        width = len(str(self.apps - 1))
        if self.namespaces == 1:
            return "app-%0*d" % (width, index % self.apps), "bench"
        app = (index // self.namespaces) % self.apps
        ns_width = len(str(self.namespaces - 1))
        return "app-%0*d" % (width, app), "ns-%0*d" % (ns_width, index % self.namespaces)

    def series_for(self, fill):
        """A copy of the shape sized so that `fill` deliveries make exactly
        `fill` distinct series (S3: one app each; S4: fill / 10 apps)."""
        if self.kind != "series":
            return self
        apps = max(1, fill // self.namespaces)
        return Shape(self.name, self.title, apps, self.namespaces, self.fresh_timestamps, self.kind)


SHAPES = {
    "S1": Shape("S1", "one app, random digests, one timestamp (today's)", 1, 1, False, "fresh"),
    "S2": Shape("S2", "50 apps, random sha256 image digests, fresh timestamps (now - 60 s)", 50, 1, True, "fresh"),
    "S3": Shape("S3", "100k series with 100k distinct apps", 100_000, 1, True, "series"),
    "S4": Shape("S4", "10k apps x 10 namespaces (100k series)", 10_000, 10, True, "series"),
    "S5": Shape("S5", "growth: S2 against a store pre-filled with 1M deliveries", 50, 1, True, "growth"),
}
