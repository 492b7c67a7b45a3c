"""What a started image must answer, the same for the emulated image steps and for a real container:
``/readyz`` 200, then a batch write (refused without the API key), a text query and an image upload."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import httpx

READY_SECONDS = 120  # loading the featurizer graphs on a busy two-core machine
CLIPART = Path("/usr/share/openclipart/png")  # Debian's openclipart-png (deploy/bootstrap.sh)
# An image and a text of the same thing, three times: the pretrained bundle ranks each one's partner first.
PAIRS = {
    "apple": ("food/fruit/an_apple_01.png", "a red apple"),
    "bicycle": ("transportation/vehicles/bicycle_01.png", "a bicycle to ride"),
    "note": ("recreation/music/musical_note_nicu_bucule_01.png", "a musical note"),
}


def wait_until_ready(url: str, failure: Callable[[], str | None]) -> float:
    """Seconds until ``/readyz`` answers 200; ``failure()`` says why the service is gone, else None."""
    started = time.perf_counter()
    while time.perf_counter() - started < READY_SECONDS:
        gone = failure()
        assert gone is None, gone
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/readyz did not answer 200 within {READY_SECONDS} s")


def answers_a_batch_write_a_text_query_and_an_image_upload(url: str, api_key: str) -> None:
    encoded = {name: base64.b64encode((CLIPART / file).read_bytes()).decode() for name, (file, _) in PAIRS.items()}
    items = [{"id": f"img/{name}", "modality": "image", "image_base64": data} for name, data in encoded.items()]
    items += [{"id": f"txt/{name}", "modality": "text", "text": text} for name, (_, text) in PAIRS.items()]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/items:batch", json={"items": items}).status_code == 403  # no key, no write
        written = client.post("/v1/items:batch", json={"items": items}, headers={"X-API-Key": api_key})
        assert written.status_code == 200 and written.json()["stored"] == len(items), written.text

        for name, (file, text) in PAIRS.items():
            found = client.post("/v1/search/text-to-image", json={"text": text, "k": 3, "probe": "all"})
            assert found.status_code == 200 and found.json()["results"][0]["id"] == f"img/{name}", found.text
            upload = {"image": (Path(file).name, (CLIPART / file).read_bytes(), "image/png")}
            found = client.post("/v1/search/image-to-text/upload", files=upload, data={"k": "3", "probe": "all"})
            assert found.status_code == 200 and found.json()["results"][0]["id"] == f"txt/{name}", found.text
