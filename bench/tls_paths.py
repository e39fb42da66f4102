"""Where TLS costs on Flotilla's wire: one body each way, plain HTTP against TLS, and levers.

A model-sized body moves between the product's client transport (`AggregatorConnection`:
blocking http.client, `download_into` and `upload`) and an aiohttp server set up as the
aggregator's (Python HTTP parser, the model written in a small fleet's send pieces
(connection_buffers.py), an update read with `http_continue.RequestBody` into a preallocated
buffer), in two processes on 127.0.0.1, so each side has a core as in a round. Per
transport: the best downloads and uploads in GB/s (`--passes` passes over every variant in
turn, `--repeats` transfers each, so a load that drifts meets every variant alike), against
the loopback floor of the same transport measured in the same passes (floor.py); and the CPU
seconds per GB that the server and the client spent (all transfers; CPU time, unlike wall
time, hardly moves with other work on the machine). Then each lever alone, its CPU against
this run's baseline of the same transport (TLS; plain too for the levers that are not TLS's
own):

    read-16k    the client reads a download in 16 KiB pieces (transport.read_piece: a 64th
                of the model, at most 1 MiB; 16 KiB until 2026-12-03)
    send-4m     the server writes the model in 4 MiB pieces (a small fleet's: 1 MiB)
    sslbuf-1m   asyncio's SSL layer reads the socket 1 MiB at a time (sslproto: 256 KiB;
                with asyncio-tls only)
    aes128      TLS_AES_128_GCM_SHA256 preferred to AES-256 (OPENSSL_CONF, both ends)
    uvloop      the server runs on uvloop (its own SSL layer); needs uvloop importable
                (`pip install --target DIR uvloop`, then FLOTILLA_BENCH_EXTRAS=DIR)
    asyncio-tls the server's TLS through asyncio's own layer (memory BIOs), as the
                aggregator served it until 2026-12-04; by default it is the product's
                (aggregator/tls_transport.py: OpenSSL on the socket itself)

    .venv/bin/python bench/tls_paths.py [--mb 256] [--repeats 3] [--passes 3] [--levers ...]
    .venv/bin/python bench/tls_paths.py --profile /tmp/prof   # the server under py-spy

Not part of the test suite: figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
EXTRAS = os.environ.get("FLOTILLA_BENCH_EXTRAS", "")
LEVERS = ("read-16k", "send-4m", "asyncio-tls", "sslbuf-1m", "aes128", "uvloop")
PLAIN_TOO = ("read-16k", "send-4m", "uvloop")  # levers that are not TLS's own: plain rows too
AES128 = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
"""


def serve(*, size: int, pki: Path | None, levers: set[str]) -> None:
    """The server side (a process of its own): prints its port, serves until killed."""
    # The Python parser, as `flotilla aggregator` takes for bodies past 1 MiB
    # (server.choose_request_parser): these are 64-256 MiB.
    os.environ.setdefault("AIOHTTP_NO_EXTENSIONS", "1")
    import asyncio
    import asyncio.sslproto

    from aiohttp import web

    from flotilla.fl.aggregator.connection_buffers import ConnectionBuffers
    from flotilla.fl.aggregator.http_continue import RequestBody
    from flotilla.fl.aggregator.tls_transport import serve_tls
    from flotilla.fl.tls import server_context

    chunk = 4 << 20 if "send-4m" in levers else ConnectionBuffers.for_fleet(1).send_piece
    if "sslbuf-1m" in levers:
        asyncio.sslproto.SSLProtocol.max_size = 1 << 20
    payload = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))
    into = memoryview(bytearray(size))

    async def model(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        for piece in range(0, size, chunk):
            await response.write(payload[piece : piece + chunk])
        await response.write_eof()
        return response

    async def update(request: web.Request) -> web.Response:
        got = 0
        async for data in RequestBody(request):
            into[got : got + len(data)] = data
            got += len(data)
        return web.json_response({"received": got})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/model", model)
        app.router.add_put("/update", update)
        runner = web.AppRunner(app, keepalive_timeout=3600, access_log=None)
        await runner.setup()
        tls = server_context(pki / "tls.crt", pki / "tls.key") if pki else None
        if tls is not None and not levers & {"asyncio-tls", "sslbuf-1m", "uvloop"}:
            port = serve_tls(runner.server, tls, "127.0.0.1", 0).address[1]  # type: ignore[arg-type]
        else:  # asyncio's TLS layer (or plain HTTP)
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
            port = runner.addresses[0][1]
        print(f"PORT {port} {os.getpid()}", flush=True)
        await asyncio.Event().wait()

    if "uvloop" in levers:  # not a dependency: only where FLOTILLA_BENCH_EXTRAS has it
        importlib.import_module("uvloop").run(main())
    else:
        asyncio.run(main())


def client(
    *, url: str, size: int, repeats: int, ca: Path | None, levers: set[str], server: int
) -> None:
    """The client side (a process of its own): prints the best download and upload seconds
    and the CPU seconds the client and the server (pid `server`) spent on them in all."""
    from procs import cpu_seconds

    from flotilla.fl.client import transport
    from flotilla.fl.tls import client_context

    if "read-16k" in levers:
        transport.MAX_READ_PIECE = 16 << 10
    trust = client_context(ca_file=ca) if ca else None
    connection = transport.AggregatorConnection(url, "bench-token", ssl_context=trust)
    buffer = bytearray(size)
    body = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))
    found: dict[str, float] = {}

    def timed(what: str, action: Callable[[], object]) -> None:
        wall, mine, theirs = time.perf_counter(), time.process_time(), cpu_seconds(server)
        action()
        wall = time.perf_counter() - wall
        found[what] = min(found.get(what, wall), wall)
        mine, theirs = time.process_time() - mine, cpu_seconds(server) - theirs
        found[f"{what} client cpu"] = found.get(f"{what} client cpu", 0) + mine
        found[f"{what} server cpu"] = found.get(f"{what} server cpu", 0) + theirs

    connection.download_into("/model", buffer)  # warm-up: connection, handshake, first touch
    connection.upload("/update", body, {})
    for _ in range(repeats):
        timed("down", lambda: connection.download_into("/model", buffer))
        timed("up", lambda: connection.upload("/update", body, {}))
    print(json.dumps(found))


def one_path(
    *, size: int, repeats: int, pki: Path | None, levers: set[str], profile: Path | None
) -> dict[str, float]:
    """Start a server and a client for one transport and set of levers; their timings."""
    env = {**os.environ, "PYTHONPATH": f"{BENCH}:{EXTRAS}:{os.environ.get('PYTHONPATH', '')}"}
    if "aes128" in levers:
        env["OPENSSL_CONF"] = str(Path(tempfile.gettempdir()) / "flotilla-bench-aes128.cnf")
        Path(env["OPENSSL_CONF"]).write_text(AES128)
    me = [sys.executable, __file__, "--size", str(size), "--levers", ",".join(levers) or "none"]
    trust = ["--pki", str(pki)] if pki else []
    spy = [
        *(["py-spy"] if not EXTRAS else [f"{EXTRAS}/bin/py-spy"]),
        *(["record", "--native", "-f", "speedscope", "-o"]),
    ]
    name = f"server-{'tls' if pki else 'plain'}-{'-'.join(sorted(levers)) or 'base'}"
    spied = [*spy, str(profile / f"{name}.speedscope.json"), "--"] if profile else []
    server = subprocess.Popen(
        [*spied, *me, *trust, "--serve"], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        assert server.stdout is not None
        line = ""
        while not line.startswith("PORT "):
            line = server.stdout.readline().decode()
            if not line:
                raise RuntimeError("the server did not start")
        _, port, pid = line.split()
        url = f"{'https' if pki else 'http'}://127.0.0.1:{port}"
        ca = ["--ca", str(pki / "ca.crt")] if pki else []
        out = subprocess.run(
            [*me, "--repeats", str(repeats), *ca, "--server-pid", pid, "--client", url],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        times: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
        return times
    finally:
        os.killpg(server.pid, 2 if profile else 15)  # SIGINT: py-spy writes its profile
        server.wait(timeout=60)


def floor_in_subprocess(levers: set[str]) -> dict[str, Any]:
    """floor.py's TLS floor under the levers' OpenSSL settings (a fresh process reads them)."""
    env = {**os.environ, "PYTHONPATH": f"{BENCH}:{os.environ.get('PYTHONPATH', '')}"}
    if "aes128" in levers:
        env["OPENSSL_CONF"] = str(Path(tempfile.gettempdir()) / "flotilla-bench-aes128.cnf")
        Path(env["OPENSSL_CONF"]).write_text(AES128)
    code = "import json, floor; b, c = floor.tls_loopback_bandwidth(); print(json.dumps([b, c]))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    bandwidth, cipher = json.loads(out.stdout.splitlines()[-1])
    return {"bandwidth": bandwidth, "cipher": cipher}


Run = tuple[str, str, bool, set[str]]  # transport, lever, TLS, levers


def measure_passes(args: argparse.Namespace, runs: list[Run], pki: Path) -> dict[str, Any]:
    """Every run and floor once per pass, passes in turn (a machine's load drifts: each
    variant sees the same drift); the best of all passes for each."""
    from floor import loopback_bandwidth

    best: dict[str, Any] = {"floor plain": 0.0, "floor tls": 0.0, "floor aes128": 0.0}
    for _ in range(args.passes):
        best["floor plain"] = max(best["floor plain"], loopback_bandwidth())
        found = floor_in_subprocess(set())
        best["floor tls"] = max(best["floor tls"], found["bandwidth"])
        best["cipher"] = found["cipher"]
        if any("aes128" in levers for *_, levers in runs):
            best["floor aes128"] = max(
                best["floor aes128"], floor_in_subprocess({"aes128"})["bandwidth"]
            )
        for transport, lever, tls, levers in runs:
            t = one_path(
                size=args.mb << 20,
                repeats=args.repeats,
                pki=pki if tls else None,
                levers=levers,
                profile=args.profile,
            )
            key = f"{transport}/{lever}"
            if key not in best:
                best[key] = t
            else:  # wall times: the best; CPU seconds: the sum
                best[key] = {
                    k: best[key][k] + t[k] if "cpu" in k else min(best[key][k], t[k]) for k in t
                }
    return best


def report(args: argparse.Namespace) -> None:
    from flotilla.local.tls import write_local_tls

    size = args.mb << 20
    levers = [lever for lever in args.levers.split(",") if lever and lever != "none"]
    runs: list[Run] = [("plain", "-", False, set()), ("TLS", "-", True, set())]
    runs += [("TLS", lever, True, {lever}) for lever in levers]
    runs += [("plain", lever, False, {lever}) for lever in levers if lever in PLAIN_TOO]
    with tempfile.TemporaryDirectory(prefix="flotilla-tls-") as folder:
        pki = write_local_tls(Path(folder) / "tls").cert.parent
        best = measure_passes(args, runs, pki)
    print(
        f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; body {args.mb} MiB; "
        f"best of {args.passes} passes x {args.repeats}; loopback floor plain "
        f"{best['floor plain'] / 1e9:.2f} GB/s, TLS {best['floor tls'] / 1e9:.2f} GB/s "
        f"({best['cipher']})"
        + (f", AES-128 {best['floor aes128'] / 1e9:.2f} GB/s" if best["floor aes128"] else "")
        + "\n"
    )
    print(
        "| transport | lever | download | upload | **download / floor** | **upload / floor** "
        "| CPU s per GB down: server + client | up: server + client "
        "| **CPU down: base / this** | **CPU up: base / this** |"
    )
    print("| --- " * 10 + "|")
    moved = size * args.repeats * args.passes / 1e9  # GB per direction per run, all passes
    cpu = {key: _cpu(t, moved) for key, t in best.items() if "/" in key}
    for transport, lever, tls, chosen in runs:
        key = f"{transport}/{lever}"
        t, c, base = best[key], cpu[key], cpu[f"{transport}/-"]
        floor = best[
            "floor aes128" if "aes128" in chosen else "floor tls" if tls else "floor plain"
        ]
        down, up = size / t["down"], size / t["up"]
        gain = f"**{base['down'] / c['down']:.2f}x** | **{base['up'] / c['up']:.2f}x**"
        print(
            f"| {transport} | {lever} | {down / 1e9:.2f} GB/s | {up / 1e9:.2f} GB/s | "
            f"**{floor / down:.2f}x** | **{floor / up:.2f}x** | "
            f"{c['down']:.2f} s ({c['down server']:.2f} + {c['down client']:.2f}) | "
            f"{c['up']:.2f} s ({c['up server']:.2f} + {c['up client']:.2f}) | "
            f"{gain} |"
        )


def _cpu(t: dict[str, float], moved: float) -> dict[str, float]:
    """CPU seconds per GB moved, by direction and side, and both sides together."""
    found = {}
    for way in ("down", "up"):
        found[f"{way} server"] = t[f"{way} server cpu"] / moved
        found[f"{way} client"] = t[f"{way} client cpu"] / moved
        found[way] = found[f"{way} server"] + found[f"{way} client"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="body size in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="transfers per pass and run")
    parser.add_argument("--passes", type=int, default=3, help="passes over every run, in turn")
    parser.add_argument("--levers", default=",".join(LEVERS), help="of " + ", ".join(LEVERS))
    parser.add_argument("--profile", type=Path, help="run each server under py-spy, here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ca", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = set(args.levers.split(",")) - {"none"}
    if args.serve:
        serve(size=args.size, pki=args.pki, levers=chosen)
    elif args.client:
        client(
            url=args.client,
            size=args.size,
            repeats=args.repeats,
            ca=args.ca,
            levers=chosen,
            server=args.server_pid,
        )
    else:
        if args.profile:
            args.profile = args.profile.resolve()
            args.profile.mkdir(parents=True, exist_ok=True)
        report(args)


if __name__ == "__main__":
    main()
