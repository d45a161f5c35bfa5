"""Celery baseline of benches/inflight.rs: the same slow fal exchange as
genfleet's FalProvider, in a Celery task.

One task = one product-photo generation against the fake fal queue API the
bench serves: read the input photo, submit it as a data URI
(`POST {base}/{model}` with `Authorization: Key ...`), poll the status URL
every 0.5 s until it leaves IN_QUEUE/IN_PROGRESS (polling once at once, as
genfleet does), GET the response URL and download every image it names.
Nothing else: no validation or re-encoding of the photo, no credits, no
storage, no result message (results are ignored).

Run by the bench as `celery -A tasks worker -P gevent -c 2000
--prefetch-multiplier 1`: Celery's gevent pool monkey-patches the standard
library before this module is imported, so `requests` and `time.sleep`
yield to the other greenlets. Prefork would hold one task per process; the
gevent pool is the fair comparison for thousands of waiting calls.

Settings come from the environment the bench sets (defaults for a manual
run in brackets): GENFLEET_CELERY_BROKER (the default vhost),
GENFLEET_FAKE_FAL_URL, GENFLEET_FAL_MODEL (test/sleep-2000),
GENFLEET_FAL_KEY, GENFLEET_INFLIGHT_INPUT_FILE (empty: no input image),
GENFLEET_FAL_POLL_SECONDS (0.5), GENFLEET_CELERY_HTTP_POOL (2000),
GENFLEET_CELERY_READY_FILE (written once the worker consumes).
"""

import base64
import os
import time

import requests
from celery import Celery
from celery.signals import worker_ready
from kombu import Queue
from requests.adapters import HTTPAdapter

BROKER = os.environ.get("GENFLEET_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2f")
FAL = os.environ.get("GENFLEET_FAKE_FAL_URL", "http://127.0.0.1:8080/").rstrip("/")
MODEL = os.environ.get("GENFLEET_FAL_MODEL", "test/sleep-2000")
KEY = os.environ.get("GENFLEET_FAL_KEY", "bench-key")
INPUT = os.environ.get("GENFLEET_INFLIGHT_INPUT_FILE", "")
POLL_SECONDS = float(os.environ.get("GENFLEET_FAL_POLL_SECONDS", "0.5"))
HTTP_POOL = int(os.environ.get("GENFLEET_CELERY_HTTP_POOL", "2000"))
READY_FILE = os.environ.get("GENFLEET_CELERY_READY_FILE", "")
# genfleet's default `providers.fal.request_timeout_seconds`.
TIMEOUT = 60
QUEUE = "genfleet-inflight"

app = Celery("tasks", broker=BROKER)
app.conf.update(
    # Fire and forget: the bench counts finished tasks at the fake.
    task_ignore_result=True,
    # Ack after the task returns, so a worker crash redelivers it: the
    # at-least-once contract genfleet keeps (it acks after its result is
    # confirmed). Celery's default acks before running.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    # A quorum queue, as genfleet's job queues are, so both pay the same
    # broker-side cost per message. Celery turns off global QoS for it.
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE, queue_arguments={"x-queue-type": "quorum"})],
    broker_connection_retry_on_startup=True,
)

# One session for every greenlet, its pool as large as the concurrency:
# urllib3 keeps at most `pool_maxsize` idle connections per host and would
# otherwise open and close a connection for most polls (its default is 10).
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=HTTP_POOL))
session.headers["Authorization"] = f"Key {KEY}"


def _json(response):
    response.raise_for_status()
    return response.json()


@app.task(name="tasks.generate")
def generate(job_id, prompt):
    body = {"prompt": prompt, "num_images": 1}
    if INPUT:
        # Read per task, as a worker fetches each job's own upload.
        with open(INPUT, "rb") as f:
            photo = f.read()
        body["image_url"] = "data:image/jpeg;base64," + base64.b64encode(photo).decode("ascii")
    submitted = _json(session.post(f"{FAL}/{MODEL}", json=body, timeout=TIMEOUT))
    del body
    while True:
        status = _json(session.get(submitted["status_url"], timeout=TIMEOUT))
        if status["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            break
        time.sleep(POLL_SECONDS)
    result = _json(
        session.get(status.get("response_url") or submitted["response_url"], timeout=TIMEOUT)
    )
    for image in result["images"]:
        download = session.get(image["url"], timeout=TIMEOUT)
        download.raise_for_status()
        if not download.content.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{job_id}: the output is not a PNG")


@worker_ready.connect
def _tell_the_bench(**_):
    if READY_FILE:
        with open(READY_FILE, "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
