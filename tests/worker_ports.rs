//! The helpers' ports: a test never hands the worker a port it probed and
//! let go (another process may take it before the worker binds it). A
//! worker configured with `http_port: 0` binds a port of the system's
//! choosing and the helpers read it from its log; one whose configuration
//! names a port that is taken is started again on such a port. Here the
//! race is made certain: the test itself holds the configured port.

mod support;

use std::time::Duration;

use genfleet_credits::Ledger;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_port_was_taken_starts_on_another() {
    let vhost = Vhost::create();
    let schema = Schema::new();
    let dir = TempDir::new("genfleet-ports");
    let root = store_with_photo(&dir.0);
    let ledger = Ledger::connect(PG_URL, &schema.name, 2).await.unwrap();
    ledger.migrate().await.unwrap();

    // What a busy machine does between a probe and the worker's bind:
    // someone else listens on the port. Held until the end of the test.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let config = write_config(
        &dir.0,
        &WorkerSettings {
            amqp_url: vhost.url(),
            schema: &schema.name,
            storage_root: &root,
            // No job here.
            fal_base_url: "http://127.0.0.1:9/",
            concurrency: 1,
            grace_seconds: 5,
            http_port: taken_port,
            fal_poll_ms: 50,
        },
    );
    let log = dir.0.join("worker.log");

    // Twice: a start, and a restart on the same configuration.
    for start in 1..=2 {
        let mut worker = WorkerProcess::start(&config, log.clone());
        let port = wait_ready(&mut worker, Duration::from_secs(60)).await;
        assert_ne!(port, taken_port, "start {start}");
        assert_eq!(worker.listening_port(), Some(port), "start {start}");
        let (status, _) = http_get(port, "/readyz").await.expect("listener answers");
        assert_eq!(status, 200, "start {start}");
        // The retry happened because the port was taken, not by chance:
        // each start's first process said so before it exited.
        let text = without_colours(&std::fs::read_to_string(&log).unwrap());
        let refused = text
            .lines()
            .filter(|l| {
                l.contains(&format!("http.listen 127.0.0.1:{taken_port}"))
                    && l.contains("Address already in use")
            })
            .count();
        assert_eq!(refused, start, "{text}");
        let status = worker.terminate(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "start {start}");
    }
    drop(taken);
}
