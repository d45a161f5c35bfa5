"""The bare-calls baseline of benches/inflight.rs, beside genfleet's
provider-layer scenario: `python calls.py <base_url> <jobs> <model> <input>`
makes <jobs> concurrent `fal_exchange.generate` calls, each in its own
greenlet, then prints one `RESULT key=value...` line as the bench's
`--provider-calls` child does.

The same work as that child and nothing more: no Celery, no broker, no
file read per call (every call sends one shared copy of the photo, as the
Rust child shares one `Bytes`), one `requests.Session` with a pool as large
as the call count (as tasks.py). Its figures are this process's own, read
from /proc/self the way the Rust child reads its own: idle `VmRSS` before
the first call, `VmHWM` after the last, utime + stime (+ children's, none
here) in clock ticks between the two.
"""

# Before anything imports socket or ssl, as Celery's gevent pool does.
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

import fal_exchange  # noqa: E402

# genfleet's default `providers.fal.request_timeout_seconds` and poll.
TIMEOUT = 60
POLL_SECONDS = 0.5


def cpu_ticks():
    with open("/proc/self/stat", encoding="ascii") as f:
        text = f.read()
    # utime, stime, cutime, cstime: fields 14-17, counted after the `)`
    # that ends the command name.
    fields = text.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])


def status_kb(key):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    base_url, jobs, model, input_path = sys.argv[1:5]
    jobs = int(jobs)
    fal = base_url.rstrip("/")
    with open(input_path, "rb") as f:
        photo = f.read()
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=jobs))
    session.headers["Authorization"] = "Key bench-key"
    prompts = [f"the mug on a marble counter, take {i}" for i in range(jobs)]
    time.sleep(0.2)

    idle_rss_kb = status_kb("VmRSS")
    before = cpu_ticks()
    started = time.monotonic()
    calls = [
        gevent.spawn(
            fal_exchange.generate, session, fal, model, prompt, photo, POLL_SECONDS, TIMEOUT
        )
        for prompt in prompts
    ]
    gevent.joinall(calls)
    wall = time.monotonic() - started
    cpu = cpu_ticks() - before
    peak_rss_kb = status_kb("VmHWM")

    ok = sum(1 for call in calls if call.successful() and call.value == 1)
    failed = next((call for call in calls if not call.successful()), None)
    if failed is not None:
        print(f"gevent calls: first error: {failed.exception!r}", file=sys.stderr)
    print(
        f"RESULT wall_us={int(wall * 1e6)} idle_rss_kb={idle_rss_kb} "
        f"peak_rss_kb={peak_rss_kb} cpu_ticks={cpu} ok={ok}",
        flush=True,
    )


if __name__ == "__main__":
    main()
