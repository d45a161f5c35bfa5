//! [`ClamdScanner`] against a real clamd ([`PrivateClamd`], the committed
//! EICAR database), over TCP and over the unix socket; and against no clamd
//! at all, and one that never answers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::testing::{PrivateClamd, EICAR, EICAR_SIGNATURE, STREAM_MAX_BYTES};
use crate::{ClamdConfig, ClamdScanner, ScanError, Scanner, Verdict};

fn fixture(relative: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scanner(address: &str, timeout: Duration) -> ClamdScanner {
    ClamdScanner::new(ClamdConfig {
        address: address.parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        timeout,
    })
}

#[derive(Debug, PartialEq)]
enum Expected {
    Clean,
    Infected,
    LimitExceeded,
}

#[tokio::test]
async fn verdicts_from_a_real_clamd_over_tcp_and_unix_socket() {
    let clamd = PrivateClamd::start();
    let photo = fixture("corpus/photos/p08_dogs_portrait_orient6_1000x667.jpg");
    let mut polyglot = photo.clone();
    polyglot.extend_from_slice(EICAR);
    let mut buried = photo.clone();
    buried.extend_from_slice(EICAR);
    buried.extend_from_slice(&photo);
    let table: Vec<(&str, Vec<u8>, Expected)> = vec![
        // The real corpus file: the 68-byte EICAR string under a .jpg name.
        (
            "hostile/eicar.jpg",
            fixture("hostile/eicar.jpg"),
            Expected::Infected,
        ),
        // A real JPEG with EICAR appended after its end (a polyglot).
        ("jpeg + eicar", polyglot, Expected::Infected),
        // EICAR between two copies of the JPEG, beyond the first chunk.
        ("jpeg + eicar + jpeg", buried, Expected::Infected),
        ("clean photo", photo, Expected::Clean),
        ("empty input", Vec::new(), Expected::Clean),
        (
            "above StreamMaxLength",
            vec![0u8; STREAM_MAX_BYTES + 1024 * 1024],
            Expected::LimitExceeded,
        ),
    ];
    for address in [clamd.tcp_address(), clamd.unix_address()] {
        let scanner = scanner(&address, Duration::from_secs(30));
        scanner.ping().await.unwrap();
        for (label, bytes, expected) in &table {
            let got = scanner.scan(bytes).await;
            match (expected, &got) {
                (Expected::Clean, Ok(Verdict::Clean)) => {}
                (Expected::Infected, Ok(Verdict::Infected { signature })) => {
                    assert_eq!(signature, EICAR_SIGNATURE, "{address} {label}");
                }
                (Expected::LimitExceeded, Err(e @ ScanError::LimitExceeded(_))) => {
                    assert!(!e.is_unavailable());
                    assert!(e.to_string().contains("size limit exceeded"), "{e}");
                }
                _ => panic!(
                    "{address} {label}: expected {expected:?}, got {got:?}\n{}",
                    clamd.log_tail()
                ),
            }
        }
    }
    // Many scans at once share one clamd.
    let scanner = std::sync::Arc::new(scanner(&clamd.unix_address(), Duration::from_secs(30)));
    let mut scans = tokio::task::JoinSet::new();
    for i in 0..16 {
        let scanner = scanner.clone();
        scans.spawn(async move {
            let bytes: Vec<u8> = if i % 2 == 0 {
                EICAR.to_vec()
            } else {
                vec![7; 1000]
            };
            (i, scanner.scan(&bytes).await)
        });
    }
    while let Some(joined) = scans.join_next().await {
        let (i, verdict) = joined.unwrap();
        assert_eq!(
            verdict.unwrap() == Verdict::Clean,
            i % 2 == 1,
            "scan {i} of 16 concurrent"
        );
    }
}

#[tokio::test]
async fn no_clamd_is_unavailable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("genfleet-no-clamd-{}", std::process::id()));
    let addresses = [
        format!("tcp:127.0.0.1:{port}"),
        format!("unix:{}", dir.join("clamd.sock").display()),
    ];
    for address in addresses {
        let scanner = scanner(&address, Duration::from_secs(30));
        let started = Instant::now();
        let err = scanner.scan(EICAR).await.unwrap_err();
        assert!(err.is_unavailable(), "{address}: {err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
        assert!(scanner.ping().await.unwrap_err().is_unavailable());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{address}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_clamd_that_never_answers_times_out_as_unavailable() {
    // Accepts, reads everything, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut socket, &mut sink).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let scanner = scanner(&format!("tcp:127.0.0.1:{port}"), Duration::from_millis(300));
    let started = Instant::now();
    let err = scanner.scan(EICAR).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_server_that_is_not_clamd_is_a_protocol_error() {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let scanner = scanner(&format!("tcp:127.0.0.1:{port}"), Duration::from_secs(5));
    let err = scanner.scan(EICAR).await.unwrap_err();
    assert!(matches!(err, ScanError::Protocol(_)), "{err}");
    assert!(matches!(
        scanner.ping().await.unwrap_err(),
        ScanError::Protocol(_)
    ));
}
