"""HTTP start-to-status throughput: each of C threads, on its own keep-alive connection, starts
an orchestration over the Durable Functions API (POST, 202 with Location) and reads the status
URL it was given (GET, 202 while pending), N pairs in all. No worker is needed: the figure is the
HTTP API's own cost (routing, JSON, the store's insert and read), not orchestration throughput.
Standard library only, so it runs anywhere Python 3 does.

    python3 bench/http_load.py --url http://127.0.0.1:7071 [--n 2000] [--concurrency 16] [--key KEY]

Prints one line of figures; exits non-zero if any answer was not the expected 202.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import threading
import time
import urllib.parse

BASE = "/runtime/webhooks/durabletask"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the HTTP listener, e.g. http://127.0.0.1:7071")
    parser.add_argument("--n", type=int, default=2000, help="start+status pairs in all")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--key", help="API key, sent as Authorization: Bearer")
    args = parser.parse_args()

    target = urllib.parse.urlsplit(args.url)
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    starts: list[float] = []
    statuses: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [args.n]

    def take() -> bool:
        with lock:
            if remaining[0] == 0:
                return False
            remaining[0] -= 1
            return True

    def run() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        mine_starts, mine_statuses = [], []
        try:
            while take():
                t0 = time.perf_counter()
                conn.request("POST", f"{BASE}/orchestrators/BenchHello", body=b'"x"', headers=headers)
                r = conn.getresponse()
                r.read()
                t1 = time.perf_counter()
                if r.status != 202:
                    raise RuntimeError(f"start answered {r.status}")
                location = urllib.parse.urlsplit(r.getheader("Location")).path
                conn.request("GET", location, headers=headers)
                r = conn.getresponse()
                r.read()
                t2 = time.perf_counter()
                if r.status != 202:
                    raise RuntimeError(f"status answered {r.status}")
                mine_starts.append(t1 - t0)
                mine_statuses.append(t2 - t1)
        except Exception as e:  # reported, and the run fails
            with lock:
                errors.append(str(e))
        finally:
            conn.close()
            with lock:
                starts.extend(mine_starts)
                statuses.extend(mine_statuses)

    threads = [threading.Thread(target=run) for _ in range(args.concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    pairs = len(starts)
    ms = lambda s: s * 1000  # noqa: E731
    print(
        f"http start+status: {pairs} pairs in {wall:.2f} s with {args.concurrency} connections: "
        f"{pairs / wall:.0f} pairs/s ({2 * pairs / wall:.0f} requests/s); "
        f"start p50 {ms(statistics.median(starts) if starts else 0):.1f} ms p99 {ms(percentile(starts, 0.99)):.1f} ms; "
        f"status p50 {ms(statistics.median(statuses) if statuses else 0):.1f} ms p99 {ms(percentile(statuses, 0.99)):.1f} ms"
    )
    if errors:
        print(f"errors: {len(errors)}; first: {errors[0]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
