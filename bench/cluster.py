#!/usr/bin/env python3
"""The same load into one MariaDB and into a three-member Galera cluster, in one run.

Setups, each behind HAProxy (send-proxy-v2, as conf/haproxy.cfg) and each gsmtpd node with
two workers:

- plain:    one gsmtpd node -> one throwaway MariaDB (no wsrep)
- galera-1: one gsmtpd node -> the Galera cluster (members m1, m2, m3)
- galera-2: two gsmtpd nodes -> the same cluster (node A prefers m1, node B m2)

The MariaDB servers run with the same settings (tests/galera.py: 64 MB buffer pool,
innodb_flush_log_at_trx_commit=2), on this machine. The load is the tests' load client
(tests/reliability/loadclient.py) from 127.0.0.2: ``--rate`` messages/s offered by
``--concurrency`` connections for ``--seconds``, 2 KB bodies, 5 messages per connection.
Per setup it prints messages/s acknowledged, lost (a 250 without its row, read back from
the database), the client's wait from the final "." to the 250 (p50/p99), and the
commit time of a batch from gsmtpd's own histogram (p50/p99, bucket bounds).

    python3 bench/cluster.py                    # ~2 minutes
    python3 bench/cluster.py --seconds 20 --rate 3000
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import galera  # noqa: E402
from reliability.loadclient import Load, check, rate  # noqa: E402
from reliability.mariadb import ThrowawayMariaDB  # noqa: E402
from test_cluster import DATABASE, Deployment  # noqa: E402

SAME_AS_MEMBERS = ("--innodb-flush-log-at-trx-commit=2", "--performance-schema=OFF")


def commit_percentiles(deploy: Deployment) -> tuple[float | None, float | None]:
    """p50 and p99 of gsmtpd_commit_seconds over all nodes: the upper bound of the bucket
    the percentile falls in."""
    buckets: dict[float, float] = {}
    for node in deploy.nodes.values():
        address = re.search(r"metrics on (http://\S+/metrics)", node.log()).group(1)
        text = urllib.request.urlopen(address, timeout=10).read().decode()
        for bound, count in re.findall(r'^gsmtpd_commit_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
            buckets[float(bound)] = buckets.get(float(bound), 0.0) + float(count)
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0

    def at(fraction: float) -> float | None:
        for bound, count in ordered:
            if total and count >= fraction * total:
                return bound
        return None
    return at(0.5), at(0.99)


def run_setup(name: str, deploy: Deployment, nodes: list[str], connect, args) -> str:
    for node in nodes:
        deploy.start_node(node)
    deploy.start_haproxy()
    try:
        load = Load(("127.0.0.1", deploy.port), rate=args.rate, concurrency=args.concurrency,
                    duration=args.seconds, size=2000, per_connection=5, timeout=30,
                    sources=["127.0.0.2"], run_id=f"bench-{name}-{uuid.uuid4().hex[:6]}")
        attempts = load.run()
        report = check(attempts, connect, load.run_id, name)
        p50, p99 = commit_percentiles(deploy)
        return (f"{name:9} msgs/s={rate(attempts):6.0f} acked={report.acked} lost={report.lost} "
                f"refused={sum(report.refused.values())} reply_p50={report.p50 * 1000:.1f}ms "
                f"reply_p99={report.p99 * 1000:.1f}ms commit_p50<={p50 * 1000:.1f}ms "
                f"commit_p99<={p99 * 1000:.1f}ms")
    finally:
        deploy.close()
        deploy.nodes.clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="messages/s offered (default 2000: more than it takes)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gsbench-"))
    results = []
    plain = ThrowawayMariaDB(base / "plain", extra_args=SAME_AS_MEMBERS)
    plain.start()
    try:
        plain.create_database(DATABASE)
        (base / "p").mkdir()
        deploy = Deployment(None, base / "p", {"A": plain.url(DATABASE)})
        results.append(run_setup("plain", deploy, ["A"], lambda: plain.connect(DATABASE), args))
    finally:
        plain.close()
    with galera.GaleraCluster(3) as cluster:
        cluster.members[0].query(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
        connect = lambda: cluster.members[2].connect(DATABASE)  # noqa: E731
        for name, nodes in (("galera-1", ["A"]), ("galera-2", ["A", "B"])):
            directory = base / name
            directory.mkdir()
            results.append(run_setup(name, Deployment(cluster, directory), nodes, connect, args))
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
