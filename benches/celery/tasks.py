"""Celery baseline of benches/inflight.rs: the same slow fal exchange as
genfleet's FalProvider, in a Celery task.

One task = one product-photo generation against the fake fal queue API the
bench serves: read the input photo, then `fal_exchange.generate` (submit it
as a data URI, poll every 0.5 s, GET the response, download the PNG).
Nothing else: no validation or re-encoding of the photo, no credits, no
storage, no result message (results are ignored). The task's message is
acked after it returns (acks late); the bench times the run to the last
ack as it leaves the worker's connection.

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

import os

import requests
from celery import Celery
from celery.signals import worker_ready
from kombu import Queue
from requests.adapters import HTTPAdapter

import fal_exchange

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
    # Fire and forget: the bench counts downloads at the fake and acks on
    # the wire.
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


@app.task(name="tasks.generate")
def generate(job_id, prompt):
    photo = None
    if INPUT:
        # Read per task, as a worker fetches each job's own upload.
        with open(INPUT, "rb") as f:
            photo = f.read()
    fal_exchange.generate(session, FAL, MODEL, prompt, photo, POLL_SECONDS, TIMEOUT)


@worker_ready.connect
def _tell_the_bench(**_):
    if READY_FILE:
        with open(READY_FILE, "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
