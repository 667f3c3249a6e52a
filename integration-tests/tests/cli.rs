//! The `ferromq` command as users run it: `standalone`, `send`, `consume`, `bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use ferromq_integration_tests::{binary, ferromq, free_port, wait_http_ok, Process};

struct Standalone {
    _process: Process,
    nameserver: String,
    _data: tempfile::TempDir,
}

fn standalone() -> Standalone {
    let data = tempfile::tempdir().unwrap();
    let nameserver = format!("127.0.0.1:{}", free_port());
    let broker_admin = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary("ferromq"));
    command
        .arg("standalone")
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["--nameserver-listen", &nameserver])
        .args([
            "--nameserver-admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--broker-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--broker-admin-listen", &broker_admin]);
    let process = Process::spawn("standalone", &mut command, data.path());
    wait_http_ok(&broker_admin, "/readyz", Duration::from_secs(30));
    // Ready broker; wait until it registered so the first send finds a route.
    for _ in 0..200 {
        let out = ferromq(&[
            "--nameserver",
            &nameserver,
            "send",
            "--topic",
            "warmup",
            "--body",
            "x",
        ]);
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Standalone {
        _process: process,
        nameserver,
        _data: data,
    }
}

#[test]
fn send_and_consume_commands_round_trip_messages_with_tags_keys_and_properties() {
    let node = standalone();
    let ns = node.nameserver.as_str();
    let sent = ferromq(&[
        "--nameserver",
        ns,
        "send",
        "--topic",
        "greetings",
        "--tag",
        "hello",
        "--key",
        "k-1",
        "--property",
        "lang=en",
        "--count",
        "3",
        "--body",
        "hi there",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let receipts = String::from_utf8(sent.stdout).unwrap();
    assert_eq!(
        receipts.lines().filter(|l| l.starts_with("sent ")).count(),
        3,
        "{receipts}"
    );

    let consumed = ferromq(&[
        "--nameserver",
        ns,
        "consume",
        "--topic",
        "greetings",
        "--group",
        "readers",
        "--count",
        "3",
        "--json",
        "--timeout",
        "10s",
    ]);
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(consumed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["body"], "hi there");
        assert_eq!(line["tag"], "hello");
        assert_eq!(line["keys"][0], "k-1");
        assert_eq!(line["properties"]["lang"], "en");
        assert_eq!(line["topic"], "greetings");
        assert!(line["id"].as_str().unwrap().len() == 32);
        assert!(line["store_time_ms"].as_u64().unwrap() > 0);
    }
    for (i, receipt) in receipts.lines().enumerate() {
        assert!(
            lines
                .iter()
                .any(|l| receipt.contains(l["id"].as_str().unwrap())),
            "receipt {i} not consumed"
        );
    }

    let bad = ferromq(&[
        "--nameserver",
        ns,
        "send",
        "--topic",
        "bad topic",
        "--body",
        "x",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("topic"),
        "clear error expected"
    );
}

#[test]
fn bench_produce_and_consume_agree_on_200000_messages() {
    let node = standalone();
    let ns = node.nameserver.as_str();
    let produced = ferromq(&[
        "--nameserver",
        ns,
        "bench",
        "produce",
        "--topic",
        "bench",
        "--messages",
        "200000",
        "--size",
        "256",
        "--producers",
        "4",
        "--batch",
        "64",
        "--json",
    ]);
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let produced: serde_json::Value = serde_json::from_slice(&produced.stdout).unwrap();
    assert_eq!(produced["messages"], 200_000);
    assert_eq!(produced["errors"], 0);
    assert!(produced["latency_us"]["p99"].as_u64().unwrap() > 0);

    let consumed = ferromq(&[
        "--nameserver",
        ns,
        "bench",
        "consume",
        "--topic",
        "bench",
        "--group",
        "bench-readers",
        "--messages",
        "200000",
        "--json",
    ]);
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let consumed: serde_json::Value = serde_json::from_slice(&consumed.stdout).unwrap();
    assert_eq!(consumed["messages"], produced["messages"]);
    assert_eq!(consumed["errors"], 0);
}

#[test]
fn every_command_explains_itself() {
    for args in [
        vec!["--help"],
        vec!["standalone", "--help"],
        vec!["send", "--help"],
        vec!["consume", "--help"],
        vec!["bench", "produce", "--help"],
        vec!["bench", "consume", "--help"],
    ] {
        let out = ferromq(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("--nameserver"),
            "{args:?}"
        );
    }
}
