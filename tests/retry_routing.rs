//! The retry queues against a real RabbitMQ: a message published to
//! `genfleet.retry` with a delay header lands in that delay's queue only.
//! (A binding on an `x-` header matches every message in a headers
//! exchange: each requeue or park then went to all three retry queues and
//! the job came back three times.) Also on a vhost declared with the old
//! bindings, as a broker of an earlier release is.

mod support;

use std::time::Duration;

use genfleet_broker::{Broker, Outgoing, Topology, HEADER_DELAY, RETRY_EXCHANGE};
use lapin::options::QueueBindOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use support::*;

async fn depth(broker: &Broker, queue: &str) -> u32 {
    broker.queue_depth(queue).await.expect("queue depth")
}

/// Depths of the three retry queues, once the broker has routed.
async fn retry_depths(broker: &Broker) -> Vec<u32> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut depths = Vec::new();
    for delay in Topology::default().retry_delays {
        depths.push(depth(broker, &Topology::retry_queue(delay)).await);
    }
    depths
}

async fn publish_with_delay(broker: &Broker, delay: &str) {
    let publisher = broker.publisher().await.unwrap();
    let outgoing = Outgoing {
        headers: vec![(HEADER_DELAY.to_string(), delay.to_string())],
        persistent: true,
        ..Default::default()
    };
    publisher
        .publish(RETRY_EXCHANGE, "remote", b"{}", &outgoing)
        .await
        .expect("confirmed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_goes_to_its_delay_queue_only() {
    let vhost = Vhost::create();
    // As an earlier release declared it: bindings on the `x-` header.
    {
        let conn = Connection::connect(&vhost.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let broker = Broker::connect(&vhost.url(), "retry-routing-old")
            .await
            .unwrap();
        broker.declare(&Topology::default()).await.unwrap();
        for delay in Topology::default().retry_delays {
            let mut old = FieldTable::default();
            old.insert("x-match".into(), AMQPValue::LongString("all".into()));
            old.insert(
                "x-genfleet-delay".into(),
                AMQPValue::LongString(Topology::delay_label(delay).into()),
            );
            channel
                .queue_bind(
                    Topology::retry_queue(delay).as_str().into(),
                    RETRY_EXCHANGE.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    old,
                )
                .await
                .unwrap();
        }
        // The old bindings match everything: this is the bug.
        publish_with_delay(&broker, "30s").await;
        assert_eq!(retry_depths(&broker).await, vec![1, 1, 1]);
        for delay in Topology::default().retry_delays {
            channel
                .queue_purge(
                    Topology::retry_queue(delay).as_str().into(),
                    lapin::options::QueuePurgeOptions::default(),
                )
                .await
                .unwrap();
        }
    }
    // Declaring the topology again (a worker of this release starting)
    // removes them.
    let broker = Broker::connect(&vhost.url(), "retry-routing")
        .await
        .unwrap();
    broker.declare(&Topology::default()).await.unwrap();
    publish_with_delay(&broker, "30s").await;
    assert_eq!(retry_depths(&broker).await, vec![0, 1, 0]);
    publish_with_delay(&broker, "5s").await;
    publish_with_delay(&broker, "300s").await;
    let depths = retry_depths(&broker).await;
    // The 5 s message may already have gone back to genfleet.jobs.
    assert!(depths[0] <= 1, "{depths:?}");
    assert_eq!(&depths[1..], &[1, 1], "{depths:?}");
}
