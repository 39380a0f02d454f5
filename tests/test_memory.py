"""A worker's memory grows with what it keeps, not with how many pixels an upload claims: eight flat
49-megapixel images (150-850 KB each to upload, 147 MB each decoded) indexed at once."""

from pathlib import Path

import cv2
import numpy as np
import pytest

IMAGES = 8
SIDE = 7000  # 49 megapixels, under the 50-megapixel limit
PEAK_GROWTH_LIMIT = 1024**3


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak resident size) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def huge_flat_image(extension: str, params: list[int]) -> bytes:
    flat = np.full((SIDE, SIDE, 3), 90, dtype=np.uint8)
    flat[: SIDE // 2] = 160  # two flat halves: still tiny once compressed
    return cv2.imencode(extension, flat, params)[1].tobytes()


# A PNG decodes at full size; so does a progressive JPEG, whose decoder keeps every coefficient
# whatever scale it outputs (a baseline JPEG decodes already scaled down, for a fraction of that).
@pytest.mark.parametrize(("extension", "params"), [(".png", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])],
                         ids=["png", "progressive-jpeg"])
def test_eight_huge_flat_images_at_once_cost_the_worker_under_a_gigabyte(api, collection, worker, extension, params):
    image = huge_flat_image(extension, params)
    assert len(image) < 1_000_000

    pid = worker.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current resident size
    before = memory_kib(pid)
    assert before["VmHWM"] - before["VmRSS"] < 50 * 1024, before  # the reset took effect

    submitted = [api.index(collection, image, f"huge/{n}") for n in range(IMAGES)]
    tasks = [api.wait(response, timeout=300) for response in submitted]
    assert [task["state"] for task in tasks] == ["succeeded"] * IMAGES, [task["error"] for task in tasks]

    growth = (memory_kib(pid)["VmHWM"] - before["VmRSS"]) * 1024
    assert growth < PEAK_GROWTH_LIMIT, f"peak grew by {growth / 1024**2:.0f} MB"
    thumbnail = api.http.get(api.url(f"/v1/collections/{collection}/thumbnails/huge/0"))
    assert thumbnail.status_code == 200 and max(cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), 1).shape) == 96
