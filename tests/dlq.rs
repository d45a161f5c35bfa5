//! `genfleet dlq` against a real RabbitMQ, each test in its own vhost: dead
//! letters published the way the worker publishes them, and one that
//! RabbitMQ dead-lettered itself, driven through the real binary.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use genfleet_broker::{Broker, Outgoing, Topology};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::{Connection, ConnectionProperties};
use support::*;

const PROMPT: &str = "the mug on a marble kitchen counter, morning light";

/// Runs `genfleet dlq ARGS`; the transcript shows with `--no-capture`.
fn genfleet(url: &str, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_genfleet"))
        .arg("dlq")
        .args(args)
        .env_remove("GENFLEET_CONFIG")
        .env("GENFLEET__BROKER__URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("genfleet runs");
    eprintln!(
        "$ genfleet dlq {}\n{}{}(exit {})\n",
        args.join(" "),
        stdout(&output),
        String::from_utf8_lossy(&output.stderr),
        output.status.code().unwrap_or(-1)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn job_body(job_id: &str) -> Vec<u8> {
    serde_json::json!({
        "jobId": job_id,
        "tenant": {"org": "acme", "workspace": "shop-1"},
        "kind": "JOB_KIND_PRODUCT_PHOTO",
        "inputs": [{"role": "INPUT_ROLE_PRODUCT", "uri": "s3://genfleet/uploads/acme/shop-1/mug.jpg"}],
        "generation": {"providers": ["fal"], "prompt": PROMPT},
    })
    .to_string()
    .into_bytes()
}

/// Publishes a dead letter as the worker does: to the DLX, original routing
/// key, message id, content type and the genfleet error headers (the
/// contract's names, spelled out: tests/contract_names.rs).
async fn publish_dead_letter(broker: &Broker, job_id: &str, routing_key: &str, error: &str) {
    let publisher = broker.publisher().await.expect("publisher");
    let outgoing = Outgoing {
        content_type: Some("application/json".into()),
        message_id: Some(job_id.to_string()),
        persistent: true,
        headers: vec![
            ("x-genfleet-error".into(), error.into()),
            (
                "x-genfleet-reason".into(),
                format!("{error} while running {job_id}"),
            ),
            ("traceparent".into(), "00-abc-def-01".into()),
        ],
        ..Default::default()
    };
    publisher
        .publish("genfleet.dlx", routing_key, &job_body(job_id), &outgoing)
        .await
        .expect("dead letter published");
    publisher.close().await;
}

async fn depth(broker: &Broker, queue: &str) -> u32 {
    broker.queue_depth(queue).await.expect("queue depth")
}

/// Waits (up to 5 s) for `queue` to hold `expected` ready messages: messages
/// a closed channel hands back become ready again asynchronously, so a single
/// read right after a peek can race the broker.
async fn settled_depth(broker: &Broker, queue: &str, expected: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = depth(broker, queue).await;
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Takes the next message off `queue` for good (auto-ack).
async fn take(url: &str, queue: &str) -> lapin::message::Delivery {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    let _ = conn.close(200, "done".into()).await;
    message.delivery
}

/// Header names, less `x-delivery-count`, which the job queue (quorum, with
/// a delivery limit) adds to every delivery itself.
fn header_names(delivery: &lapin::message::Delivery) -> Vec<String> {
    delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k != "x-delivery-count")
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_dead_letters_list_show_replay_purge() {
    let vhost = Vhost::create();
    let url = vhost.url();
    let broker = Broker::connect(&url, "dlq-test").await.expect("broker");
    broker
        .declare(&Topology::default())
        .await
        .expect("topology");
    let ids: Vec<String> = (0..4).map(|_| new_job_id()).collect();
    publish_dead_letter(&broker, &ids[0], "cpu", "provider_failed").await;
    publish_dead_letter(&broker, &ids[1], "remote", "provider_timeout").await;
    publish_dead_letter(&broker, &ids[2], "remote", "invalid_output").await;
    publish_dead_letter(&broker, &ids[3], "bogus", "invalid_input").await;
    assert_eq!(settled_depth(&broker, "genfleet.dead", 4).await, 4);

    // list peeks: every one shown, none removed.
    let output = genfleet(&url, &["list"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    for (id, error) in ids
        .iter()
        .zip(["provider_failed", "provider_timeout", "invalid_output"])
    {
        let line = text.lines().find(|l| l.contains(id.as_str())).expect(id);
        assert!(line.contains(error), "{line}");
    }
    assert!(text.contains("4 of 4 dead letter(s)"), "{text}");
    assert_eq!(
        settled_depth(&broker, "genfleet.dead", 4).await,
        4,
        "list removes nothing"
    );
    let output = genfleet(&url, &["list", "--limit", "2"]);
    assert!(stdout(&output).contains("2 of 4"), "{}", stdout(&output));
    assert_eq!(settled_depth(&broker, "genfleet.dead", 4).await, 4);

    // show: code, reason and job, but the prompt only with --body.
    let output = genfleet(&url, &["show", &ids[0]]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("error         provider_failed"), "{text}");
    assert!(
        text.contains(&format!("provider_failed while running {}", ids[0])),
        "{text}"
    );
    assert!(
        text.contains("JOB_KIND_PRODUCT_PHOTO tenant acme/shop-1"),
        "{text}"
    );
    assert!(!text.contains(PROMPT), "no prompt without --body: {text}");
    let text = stdout(&genfleet(&url, &["show", &ids[0], "--body"]));
    assert!(text.contains(PROMPT), "{text}");
    let output = genfleet(&url, &["show", "01NOSUCHJOB0000000000000000"]);
    assert!(!output.status.success());
    assert_eq!(
        settled_depth(&broker, "genfleet.dead", 4).await,
        4,
        "show removes nothing"
    );

    // replay <id>: exactly that one moves, stripped of its dead-letter headers.
    let output = genfleet(&url, &["replay", &ids[0]]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("replayed 1 dead letter(s)"), "{text}");
    assert_eq!(settled_depth(&broker, "genfleet.jobs.cpu", 1).await, 1);
    assert_eq!(settled_depth(&broker, "genfleet.jobs.remote", 0).await, 0);
    assert_eq!(settled_depth(&broker, "genfleet.dead", 3).await, 3);
    let replayed = take(&url, "genfleet.jobs.cpu").await;
    assert_eq!(
        replayed
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(ids[0].as_str())
    );
    assert_eq!(replayed.data, job_body(&ids[0]));
    assert_eq!(header_names(&replayed), vec!["traceparent".to_string()]);

    // replay --all: the two remote ones go, the bogus key stays with a reason.
    let output = genfleet(&url, &["replay", "--all"]);
    let text = stdout(&output);
    assert!(!output.status.success(), "a message was left: {text}");
    assert!(text.contains("replayed 2 dead letter(s)"), "{text}");
    assert!(
        text.contains(&format!("left {}", ids[3])) && text.contains("not a job class"),
        "{text}"
    );
    assert_eq!(settled_depth(&broker, "genfleet.jobs.remote", 2).await, 2);
    assert_eq!(settled_depth(&broker, "genfleet.dead", 1).await, 1);

    // purge without --yes deletes nothing and says what it would delete.
    let output = genfleet(&url, &["purge", "--all"]);
    let text = stdout(&output);
    assert!(!output.status.success());
    assert!(
        text.contains(&format!("would delete {}", ids[3])) && text.contains("without --yes"),
        "{text}"
    );
    assert_eq!(settled_depth(&broker, "genfleet.dead", 1).await, 1);
    let output = genfleet(&url, &["purge", "--all", "--yes"]);
    assert!(stdout(&output).contains("deleted 1 dead letter(s)"));
    assert_eq!(settled_depth(&broker, "genfleet.dead", 0).await, 0);
    // The replayed jobs were not touched by the purge.
    assert_eq!(settled_depth(&broker, "genfleet.jobs.remote", 2).await, 2);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_rabbitmq_dead_lettered_is_listed_and_replayed() {
    let vhost = Vhost::create();
    let url = vhost.url();
    let broker = Broker::connect(&url, "dlq-test").await.expect("broker");
    broker
        .declare(&Topology::default())
        .await
        .expect("topology");
    let publisher = broker.publisher().await.expect("publisher");
    let job_id = new_job_id();
    publish_job(&publisher, "cpu", &job_body(&job_id), Some(&job_id)).await;

    // A consumer rejects it without requeue: the queue's DLX takes it.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let message = channel
        .basic_get(
            "genfleet.jobs.cpu".into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("get")
        .expect("the job");
    message
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .expect("nack");
    let started = Instant::now();
    while depth(&broker, "genfleet.dead").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let output = genfleet(&url, &["list"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(job_id.as_str()))
        .expect("listed");
    assert!(
        line.contains("genfleet.jobs.cpu") && line.contains("rejected"),
        "{line}"
    );
    let text = stdout(&genfleet(&url, &["show", &job_id]));
    assert!(text.contains("x-death: [{"), "{text}");

    let output = genfleet(&url, &["replay", &job_id]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(settled_depth(&broker, "genfleet.dead", 0).await, 0);
    let replayed = take(&url, "genfleet.jobs.cpu").await;
    assert!(
        !header_names(&replayed).iter().any(|h| h.starts_with("x-")),
        "{:?}",
        replayed.properties.headers()
    );
    let _ = conn.close(200, "done".into()).await;
    publisher.close().await;
    broker.close().await;
}

#[test]
fn replay_and_purge_need_ids_or_all() {
    for command in ["replay", "purge"] {
        let output = genfleet("amqp://127.0.0.1:1/unused", &[command]);
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("--all"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
