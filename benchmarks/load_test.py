"""Load test of ``langground serve`` on loopback: N concurrent clients for T seconds against a live server.

    .venv/bin/python benchmarks/load_test.py --clients 16 --seconds 30          # a tiny checkpoint of its own
    .venv/bin/python benchmarks/load_test.py --checkpoint demo_out/run/best      # or any checkpoint

Starts ``langground serve`` on 127.0.0.1 (a free port; never another host), warms it up, reads the
server's RSS, then runs the clients for ``--rounds`` rounds (the RSS is read after each): each posts one rendered-size image (multipart) with one expression
in a loop; every ``--oversized-every``-th request is a body over the server's ``--max-body-mb`` and must
be refused with a 413 while the others succeed. Reports requests/s, p50/p90/p99 latency of the served
requests, errors (anything else: a wrong status, a transport error; must be 0), the server's RSS before
and after, and the mean batch the batcher formed (from ``/metrics``). Exit code 1 when any error occurred.
Bounded: at most 256 clients and 600 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from langground.serve.probe import wait_until_serving

HOST = "127.0.0.1"  # loopback only
EXPRESSIONS = [
    "the red cube",
    "the small ball left of the cylinder",
    "the big metal sphere",
    "the green thing",
]


def tiny_checkpoint(root: Path, size: int) -> Path:
    """An untrained LaConvNet-T at ``size`` px with the synthetic world's words (speed needs no training)."""
    import torch

    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.text.vocab import Vocabulary

    cfg = load_preset("synth-laconvnet-t-rec", [f"transforms.input_size={size}"])
    vocab = Vocabulary.build(EXPRESSIONS)
    torch.manual_seed(0)
    return save_checkpoint(root / "tiny", model=build_model(cfg, vocab), config=cfg, vocab=vocab)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def scene_png(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 120, np.uint8)
    for _ in range(6):  # a few coloured blocks: a scene-sized, compressible PNG
        x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
        img[y : y + 40, x : x + 40] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def client_loop(
    client: httpx.AsyncClient,
    k: int,
    stop_at: float,
    image: bytes,
    oversized: bytes,
    every: int,
    stats: dict,
) -> None:
    i = 0
    while time.perf_counter() < stop_at:
        i += 1
        big = every > 0 and (k * 7919 + i) % every == 0
        files = {"image": ("scene.png", oversized if big else image, "image/png")}
        data = {"expressions": EXPRESSIONS[(k + i) % len(EXPRESSIONS)]}
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/ground", files=files, data=data)
        except httpx.HTTPError as e:
            stats["errors"].append(f"{type(e).__name__}: {e}")
            continue
        dt = time.perf_counter() - t0
        if big:
            if r.status_code == 413:
                stats["rejected"] += 1
            else:
                stats["errors"].append(f"oversized request got {r.status_code}")
        elif r.status_code == 200 and r.json()["results"][0]["box"] is not None:
            stats["latencies"].append(dt)
        else:
            stats["errors"].append(f"status {r.status_code}: {r.text[:200]}")


async def run_clients(
    url: str, clients: int, seconds: float, image: bytes, oversized: bytes, every: int
) -> dict:
    stats: dict = {"latencies": [], "errors": [], "rejected": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(
            *(client_loop(client, k, stop_at, image, oversized, every, stats) for k in range(clients))
        )
        stats["wall_s"] = time.perf_counter() - start
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="checkpoint to serve (default: an untrained tiny one)")
    ap.add_argument("--size", type=int, default=64, help="input size of the default tiny checkpoint")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup-seconds", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--image", default="320x240", help="WxH of the posted (synthetic) image")
    ap.add_argument("--image-file", type=Path, help="post this image file instead (e.g. a COCO photo)")
    ap.add_argument(
        "--rounds", type=int, default=2, help="measured rounds of --seconds each (RSS after each)"
    )
    ap.add_argument("--max-body-mb", type=float, default=1.0, help="the server's body limit")
    ap.add_argument(
        "--oversized-every", type=int, default=10, help="every n-th request is oversized (0: none)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        ap.error("bounded: 1..256 clients, 0..600 seconds")

    if args.image_file is not None:
        image = args.image_file.read_bytes()
        with Image.open(args.image_file) as im:
            (width, height), kind = im.size, im.format
    else:
        width, height = (int(v) for v in args.image.lower().split("x"))
        image, kind = scene_png(width, height), "PNG"
    oversized = os.urandom(int(args.max_body_mb * 2**20) + 4096)  # over the limit whatever its content
    tmp = tempfile.TemporaryDirectory(prefix="langground-load-")
    ckpt = args.checkpoint or tiny_checkpoint(Path(tmp.name), args.size)
    port = free_port()
    url = f"http://{HOST}:{port}"
    exe = Path(sys.executable).parent / "langground"
    cmd = [
        str(exe), "serve", str(ckpt), "--host", HOST, "--port", str(port), "--threads", str(args.threads),
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--max-body-mb", str(args.max_body_mb), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("LANGGROUND_API_KEY", None)
    log = Path(tmp.name) / "serve.log"
    server = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_until_serving(url, server, timeout_s=120)
        except ChildProcessError:
            print(log.read_text()[-3000:], file=sys.stderr)
            return 2
        info = httpx.get(f"{url}/v1/model").json()
        load = (url, args.clients)
        asyncio.run(run_clients(*load, args.warmup_seconds, image, oversized, args.oversized_every))
        rss = [rss_mib(server.pid)]
        stats: dict = {"latencies": [], "errors": [], "rejected": 0, "wall_s": 0.0}
        for _ in range(max(1, args.rounds)):
            one = asyncio.run(run_clients(*load, args.seconds, image, oversized, args.oversized_every))
            rss.append(rss_mib(server.pid))
            for key in ("latencies", "errors", "rejected", "wall_s"):
                stats[key] += one[key]
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()

    lat = sorted(stats["latencies"])
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99
    pairs_sum = metric_value(metrics, "langground_batch_pairs_sum")
    pairs_count = metric_value(metrics, "langground_batch_pairs_count")
    report = {
        "checkpoint": str(args.checkpoint or f"untrained laconvnet_t, {args.size} px"),
        "model": info["name"],
        "input_size": info["input_size"],
        "image": f"{width}x{height} {kind}, {len(image):,} bytes",
        "clients": args.clients,
        "seconds": round(stats["wall_s"], 2),
        "rounds": max(1, args.rounds),
        "server_threads": args.threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "served": len(lat),
        "requests_per_s": round(len(lat) / stats["wall_s"], 2),
        "latency_ms": {
            "p50": round(q[49] * 1000, 1),
            "p90": round(q[89] * 1000, 1),
            "p99": round(q[98] * 1000, 1),
            "max": round(lat[-1] * 1000, 1) if lat else None,
        },
        "oversized_rejected_413": stats["rejected"],
        "errors": len(stats["errors"]),
        "error_examples": stats["errors"][:5],
        # after the warm-up, then after each measured round: growth across rounds would be a leak
        "server_rss_mib": [round(v, 1) for v in rss],
        "mean_batch_pairs": round(pairs_sum / pairs_count, 2) if pairs_count else None,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
