"""Peak RSS of decoding five decompression bombs: costream's decode step vs the bare decoder.

Each bomb is a small JPEG or PNG (under 4 kB) whose header claims 16000x16000 pixels or more.
Two child processes, side by side, first decode ordinary 640x480 frames (the baseline peak RSS),
then the five bombs:

* ``costream``: ``decode_record`` (the ``DecodeFrames`` path), which reads the size from the
  header and refuses each bomb (``ImageSizeError``) before anything is decoded;
* ``opencv``: ``cv2.imdecode`` on the same bytes, i.e. decoding first and checking the size of
  the result afterwards.

Run:  python benchmarks/bench_decode_bombs.py
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np


def jpeg_bomb(w: int, h: int, progressive: bool = False) -> bytes:
    """A 16x16 JPEG whose SOF0/SOF2 frame header is patched to claim w x h pixels."""
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8), params)[1].tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


def png_bomb(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h, with a small compressed IDAT of zero rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * w) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bombs() -> list[tuple[str, str, bytes]]:
    return [
        ("jpeg 16000x16000", "image/jpeg", jpeg_bomb(16000, 16000)),
        ("jpeg progressive 16000x16000", "image/jpeg", jpeg_bomb(16000, 16000, progressive=True)),
        ("jpeg 12000x20000", "image/jpeg", jpeg_bomb(12000, 20000)),
        ("jpeg 20000x16000", "image/jpeg", jpeg_bomb(20000, 16000)),
        ("png 16000x16000", "image/png", png_bomb(16000, 16000)),
    ]


def peak_mb() -> float:
    """This process's peak resident set size (VmHWM; getrusage where /proc is missing), MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def child(mode: str) -> None:
    from costream.connectors import contract
    from costream.transforms.decode import decode_record

    def decode(ct: str, payload: bytes) -> str:
        if mode == "opencv":
            img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            return "decoded" if img is not None else "None"
        rec = contract.frame_record("cam-1", 0, 0, ct, payload)
        decode_record(rec.key, rec.value, rec.headers, image_size=224)
        return "decoded"

    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for _ in range(3):  # warm the decoders up on ordinary frames
        decode(contract.CT_JPEG, contract.encode_jpeg(rgb))
        decode(contract.CT_PNG, contract.encode_png(rgb))
    baseline = peak_mb()
    rows = []
    for name, ct, payload in bombs():
        t0 = time.perf_counter()
        try:
            outcome = decode(ct, payload)
        except Exception as err:  # DecodeFrames dead-letters any error
            outcome = type(err).__name__
        rows.append((name, len(payload), outcome, 1000 * (time.perf_counter() - t0)))
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_mb(), "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["costream", "opencv"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    results = {}
    for mode in ("costream", "opencv"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'bomb':30} {'bytes':>6}  {'costream':>16} {'ms':>7}  {'opencv':>16} {'ms':>7}")
    for a, b in zip(results["costream"]["rows"], results["opencv"]["rows"]):
        print(f"{a[0]:30} {a[1]:6d}  {a[2]:>16} {a[3]:7.2f}  {b[2]:>16} {b[3]:7.1f}")
    print()
    print(f"{'path':10} {'baseline MB':>12} {'peak MB':>9} {'peak - baseline MB':>19}")
    for mode, r in results.items():
        d = r["peak_mb"] - r["baseline_mb"]
        print(f"{mode:10} {r['baseline_mb']:12.1f} {r['peak_mb']:9.1f} {d:19.1f}")
    dc = results["costream"]["peak_mb"] - results["costream"]["baseline_mb"]
    do = results["opencv"]["peak_mb"] - results["opencv"]["baseline_mb"]
    print(f"peak RSS growth with 5 bombs: costream {dc:.1f} MB vs decoder-first {do:.1f} MB")


if __name__ == "__main__":
    main()
