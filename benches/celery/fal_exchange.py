"""The fal queue exchange of benches/inflight.rs's Python side, one copy for
both Python scenarios (the Celery task in tasks.py and the bare greenlets of
calls.py), so that they make exactly the same HTTP requests.

One call = what genfleet's FalProvider does for one product-photo
generation: submit the photo as a data URI (`POST {base}/{model}` with the
session's `Authorization: Key ...`), poll the status URL every
`poll_seconds` until it leaves IN_QUEUE/IN_PROGRESS (polling once at once,
as genfleet does), GET the response URL and download every image it names,
checking that each is a PNG.
"""

import base64
import time


def _json(response):
    response.raise_for_status()
    return response.json()


def generate(session, fal, model, prompt, photo, poll_seconds, timeout):
    """Returns the number of images downloaded; raises on any failure."""
    body = {"prompt": prompt, "num_images": 1}
    if photo is not None:
        body["image_url"] = "data:image/jpeg;base64," + base64.b64encode(photo).decode("ascii")
    submitted = _json(session.post(f"{fal}/{model}", json=body, timeout=timeout))
    del body
    while True:
        status = _json(session.get(submitted["status_url"], timeout=timeout))
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            break
        time.sleep(poll_seconds)
    result = _json(
        session.get(status.get("response_url") or submitted["response_url"], timeout=timeout)
    )
    for image in result["images"]:
        download = session.get(image["url"], timeout=timeout)
        download.raise_for_status()
        if not download.content.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{prompt!r}: the output is not a PNG")
    return len(result["images"])
