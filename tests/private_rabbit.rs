//! The private RabbitMQ node of the chaos tests: a durable quorum queue and
//! its confirmed persistent messages survive `stop_app`/`start_app` (which
//! drops every client connection) and a SIGKILL of the whole node.

mod support;

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::rabbit_node::PrivateRabbit;

const MESSAGES: u32 = 10;

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the private node")
}

/// Passive declare: the queue's message count, failing if it is gone.
async fn message_count(url: &str, queue: &str) -> u32 {
    let conn = connect(url).await;
    let channel = conn.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue still declared");
    let _ = conn.close(200, "bye".into()).await;
    declared.message_count()
}

/// Waits until the client notices that the broker dropped the connection.
async fn wait_dropped(conn: &Connection, within: Duration) {
    let started = Instant::now();
    while conn.status().connected() {
        assert!(
            started.elapsed() < within,
            "connection still up {within:?} after stop_app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_survives_stop_app_start_app_and_a_kill() {
    let started = Instant::now();
    let mut rabbit = PrivateRabbit::start();
    eprintln!("{} up in {:?}", rabbit.node, started.elapsed());
    let url = rabbit.amqp_url();
    let queue = "chaos.quorum";

    let conn = connect(&url).await;
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare quorum queue");
    for i in 0..MESSAGES {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("message {i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "message {i} nacked");
    }
    assert_eq!(message_count(&url, queue).await, MESSAGES);

    let t = Instant::now();
    rabbit.stop_app();
    eprintln!("stop_app took {:?}", t.elapsed());
    wait_dropped(&conn, Duration::from_secs(10)).await;
    assert!(
        Connection::connect(&url, ConnectionProperties::default())
            .await
            .is_err(),
        "a connection succeeded while the app was stopped"
    );

    let t = Instant::now();
    rabbit.start_app();
    eprintln!("start_app took {:?}", t.elapsed());
    assert_eq!(
        message_count(&url, queue).await,
        MESSAGES,
        "messages lost across stop_app/start_app"
    );

    let t = Instant::now();
    rabbit.restart();
    eprintln!("kill + restart took {:?}", t.elapsed());
    assert_eq!(
        message_count(&url, queue).await,
        MESSAGES,
        "confirmed messages lost across a SIGKILL of the node"
    );

    let node = rabbit.node.clone();
    let dir = rabbit.dir.clone();
    drop(rabbit);
    assert!(!dir.exists(), "node folder {} left behind", dir.display());
    let ping = std::process::Command::new("epmd").arg("-names").output();
    if let Ok(out) = ping {
        let names = String::from_utf8_lossy(&out.stdout);
        let short = node.split('@').next().unwrap_or_default();
        assert!(
            !names
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(short)),
            "{short} still registered with epmd:\n{names}"
        );
    }
}
