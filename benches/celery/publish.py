"""Publishes N `tasks.generate` tasks with Celery's own client, for
benches/inflight.rs: `python publish.py N`. Prints `publishing` just before
the first publish and `published` after the last, so the bench's clock
excludes this interpreter's start-up."""

import sys

from tasks import app, generate


def main():
    count = int(sys.argv[1])
    with app.producer_or_acquire() as producer:
        print("publishing", flush=True)
        for i in range(count):
            generate.apply_async(
                args=(f"job-{i}", f"the mug on a marble counter, take {i}"),
                producer=producer,
            )
    print("published", flush=True)


if __name__ == "__main__":
    main()
