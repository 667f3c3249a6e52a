//! The `ferromq` command as users run it: `standalone`, `send`, `consume`, `bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use ferromq_integration_tests::{binary, ferromq, start_standalone as standalone, Standalone};

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

    // What a consume printed is committed: the same group gets only what came after it.
    let sent = ferromq(&[
        "--nameserver",
        ns,
        "send",
        "--topic",
        "greetings",
        "--body",
        "fourth",
    ]);
    assert!(sent.status.success());
    let next = ferromq(&[
        "--nameserver",
        ns,
        "consume",
        "--topic",
        "greetings",
        "--group",
        "readers",
        "--count",
        "2",
        "--json",
        "--timeout",
        "2s",
    ]);
    assert!(!next.status.success(), "only one new message exists");
    let lines: Vec<serde_json::Value> = String::from_utf8(next.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["body"], "fourth");

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
    let latency = &produced["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
    assert!(latency["p99"].as_u64().unwrap() <= latency["max"].as_u64().unwrap());

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

/// `ferromq admin ARGS… --json` against the standalone's broker, found through its nameserver.
fn admin(standalone: &Standalone, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut all = vec![
        "--nameserver",
        standalone.nameserver.as_str(),
        "admin",
        "--json",
    ];
    all.extend_from_slice(args);
    let out = ferromq(&all);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn admin_commands_work_against_the_standalone() {
    let standalone = standalone();
    let cluster = admin(&standalone, &["cluster"]).unwrap();
    assert_eq!(cluster[0]["role"], "Leader", "{cluster}");

    admin(
        &standalone,
        &["topic", "create", "invoices", "--queues", "3"],
    )
    .unwrap();
    let topics = admin(&standalone, &["topic", "list"]).unwrap();
    let names: Vec<&str> = topics["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"invoices") && names.contains(&"warmup"),
        "{names:?}"
    );
    let sent = ferromq(&[
        "--nameserver",
        &standalone.nameserver,
        "send",
        "--topic",
        "invoices",
        "--key",
        "inv-7",
        "--body",
        "seven",
    ]);
    assert!(sent.status.success());
    let found = admin(
        &standalone,
        &["message", "query", "--topic", "invoices", "--key", "inv-7"],
    )
    .unwrap();
    assert_eq!(found[0]["body"], "seven");
    let id = found[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        admin(&standalone, &["message", "get", &id]).unwrap()[0]["body"],
        "seven"
    );
    admin(&standalone, &["message", "trace", &id]).unwrap();

    let updated = admin(
        &standalone,
        &["topic", "update", "invoices", "--queues", "4"],
    )
    .unwrap();
    assert_eq!(updated["queues"], 4);
    assert_eq!(
        admin(&standalone, &["topic", "show", "invoices"]).unwrap()["messages"],
        1
    );
    let consumed = ferromq(&[
        "--nameserver",
        &standalone.nameserver,
        "consume",
        "--topic",
        "invoices",
        "--group",
        "accounting",
        "--count",
        "1",
    ]);
    assert!(consumed.status.success());
    let groups = admin(&standalone, &["group", "list"]).unwrap();
    assert!(
        groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == "accounting"),
        "{groups}"
    );
    admin(&standalone, &["group", "show", "accounting"]).unwrap();
    admin(&standalone, &["group", "lag", "accounting"]).unwrap();
    admin(
        &standalone,
        &[
            "group",
            "reset-offset",
            "accounting",
            "--topic",
            "invoices",
            "--to",
            "first",
        ],
    )
    .unwrap();
    assert_eq!(
        admin(&standalone, &["dlq", "list", "accounting"]).unwrap()["messages"],
        serde_json::json!([])
    );

    let status = admin(&standalone, &["raft", "status"]).unwrap();
    assert_eq!(status["role"], "Leader", "{status}");
    // A standalone broker is a group of one that cannot change: clear refusals.
    let err = admin(&standalone, &["raft", "transfer-leader"]).unwrap_err();
    assert!(err.contains("alone in its group"), "{err}");
    // As a preStop hook would run it: nothing to do, and no error.
    let hook = ferromq(&[
        "--nameserver",
        &standalone.nameserver,
        "admin",
        "raft",
        "transfer-leader",
        "--if-leader",
    ]);
    assert!(
        hook.status.success(),
        "{}",
        String::from_utf8_lossy(&hook.stderr)
    );
    let err = admin(
        &standalone,
        &[
            "raft",
            "add-member",
            "2",
            "--raft-addr",
            "127.0.0.1:1",
            "--client-addr",
            "127.0.0.1:2",
        ],
    )
    .unwrap_err();
    assert!(err.contains("without raft.peers"), "{err}");
    let err = admin(&standalone, &["raft", "remove-member", "2"]).unwrap_err();
    assert!(err.contains("without raft.peers"), "{err}");

    admin(&standalone, &["topic", "delete", "invoices"]).unwrap();
    let err = admin(&standalone, &["topic", "show", "invoices"]).unwrap_err();
    assert!(err.contains("404"), "{err}");
}

#[test]
fn every_command_explains_its_own_options() {
    for (args, option) in [
        (vec!["--help"], "--nameserver"),
        (vec!["standalone", "--help"], "--data-dir"),
        (vec!["send", "--help"], "--deliver-at"),
        (vec!["send", "--help"], "--check-answer"),
        (vec!["consume", "--help"], "--fail-first"),
        (vec!["trace", "--help"], "--json"),
        (vec!["admin", "--help"], "--admin"),
        (vec!["admin", "dlq", "resend", "--help"], "--offset"),
        (vec!["admin", "--help"], "--token"),
        (vec!["admin", "--help"], "--admin-ca"),
        (vec!["--help"], "--tls-ca"),
        (vec!["admin", "topic", "create", "--help"], "--perm"),
        (vec!["admin", "message", "query", "--help"], "--from-ms"),
        (vec!["admin", "raft", "add-member", "--help"], "--raft-addr"),
        (vec!["--help"], "--access-key"),
        (vec!["--help"], "--log-format"),
        (vec!["lag", "--help"], "--group"),
        (vec!["bench", "produce", "--help"], "--batch"),
        (vec!["bench", "consume", "--help"], "--idle-timeout"),
        (vec!["bench", "ping", "--help"], "--count"),
        (vec!["bench", "scheduled", "--help"], "--spread"),
    ] {
        let out = ferromq(&args);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(option) && help.contains("--nameserver"),
            "{args:?}:\n{help}"
        );
    }
}

#[test]
fn send_reads_the_body_from_stdin_and_consume_fails_when_messages_are_missing() {
    use std::io::Write;
    use std::process::Stdio;
    let node = standalone();
    let ns = node.nameserver.as_str();
    let mut send = Command::new(binary("ferromq"))
        .args(["--nameserver", ns, "send", "--topic", "piped"])
        .env("FERROMQ_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    send.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    assert!(send.wait_with_output().unwrap().status.success());
    let consumed = ferromq(&[
        "--nameserver",
        ns,
        "consume",
        "--topic",
        "piped",
        "--group",
        "g",
        "--count",
        "2",
        "--json",
        "--timeout",
        "1s",
    ]);
    assert!(
        !consumed.status.success(),
        "only one of two messages exists"
    );
    let line: serde_json::Value = serde_json::from_slice(&consumed.stdout).unwrap();
    assert_eq!(line["body"], "from stdin");
    assert_eq!(line["body_encoding"], "utf8");
}
