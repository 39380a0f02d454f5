"""A worker's memory grows with what it keeps, not with how many pixels an upload claims: eight flat
49-megapixel PNGs (about 150 KB each to upload, 147 MB each decoded) indexed at once."""

from pathlib import Path

import cv2
import numpy as np

IMAGES = 8
SIDE = 7000  # 49 megapixels, under the 50-megapixel limit
PEAK_GROWTH_LIMIT = 1024**3


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak resident size) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def test_eight_huge_flat_pngs_at_once_cost_the_worker_under_a_gigabyte(api, collection, worker):
    flat = np.full((SIDE, SIDE, 3), 90, dtype=np.uint8)
    flat[: SIDE // 2] = 160  # two flat halves: still tiny as a PNG
    png = cv2.imencode(".png", flat)[1].tobytes()
    del flat
    assert len(png) < 1_000_000

    pid = worker.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current resident size
    before = memory_kib(pid)
    assert before["VmHWM"] - before["VmRSS"] < 50 * 1024, before  # the reset took effect

    submitted = [api.index(collection, png, f"huge/{n}") for n in range(IMAGES)]
    tasks = [api.wait(response, timeout=300) for response in submitted]
    assert [task["state"] for task in tasks] == ["succeeded"] * IMAGES, [task["error"] for task in tasks]

    growth = (memory_kib(pid)["VmHWM"] - before["VmRSS"]) * 1024
    assert growth < PEAK_GROWTH_LIMIT, f"peak grew by {growth / 1024**2:.0f} MB"
    thumbnail = api.http.get(api.url(f"/v1/collections/{collection}/thumbnails/huge/0"))
    assert thumbnail.status_code == 200 and max(cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), 1).shape) == 96
