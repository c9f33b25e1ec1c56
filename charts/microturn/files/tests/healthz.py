"""helm test: every service answers its health check (run with the microturn image's python).

Usage: python healthz.py URL... [--tcp HOST:PORT ...]; each URL must answer 200, each HOST:PORT must
accept a TCP connection. Retries for a while: a pod may still be starting when `helm test` runs.
"""

import socket
import sys
import time
import urllib.request

DEADLINE_S = 120


def check_http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (cluster-internal http URL)
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
        return r.read(200).decode(errors="replace").strip()


def check_tcp(target: str) -> str:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        return "accepts connections"


def main(argv: list[str]) -> int:
    checks, tcp = [], False
    for arg in argv:
        if arg == "--tcp":
            tcp = True
            continue
        checks.append((check_tcp if tcp else check_http, arg))
    failed = 0
    for check, target in checks:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                print(f"ok   {target}: {check(target)}", flush=True)
                break
            except Exception as exc:  # noqa: BLE001 (report any failure, then retry)
                if time.monotonic() > deadline:
                    print(f"FAIL {target}: {exc}", flush=True)
                    failed += 1
                    break
                time.sleep(3)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
