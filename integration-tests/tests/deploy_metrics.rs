//! The metric catalogue (docs/metrics.md) is true: the Grafana dashboard and the Prometheus
//! alert rules under `deploy/` name only catalogued metrics, and a running group and nameserver
//! export every catalogued metric, with its type, in text that the Prometheus project's own
//! parser (the `prometheus_client` Python package) reads, and nothing uncatalogued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferromq_integration_tests::{
    client, consume_distinct, find_leader, http_get, send_numbered, start_group, start_nameserver,
    wait_until,
};

fn repo_file(path: &str) -> String {
    // The directory of this run's checkout (set by cargo and nextest when tests run), not the
    // one the binary was compiled in: a build reused from another clone of the repository
    // would otherwise read that clone's files, or none once it is gone.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let root = manifest_dir.join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every `mq_…` metric name in a text, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("mq_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        i = end.max(start + 3);
    }
    names
}

#[test]
fn dashboards_and_alerts_use_catalogued_metrics() {
    let catalogue = metric_names(&repo_file("docs/metrics.md"));
    let dashboard = repo_file("deploy/grafana/ferromq.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts = repo_file("deploy/prometheus/alerts.yml");
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let used = metric_names(text);
        assert!(!used.is_empty());
        let unknown: Vec<&String> = used.difference(&catalogue).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics not in docs/metrics.md: {unknown:?}"
        );
    }
}

/// The catalogue by section (`Every service`, `Broker`, `Nameserver`): metric name → type.
fn catalogue() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in repo_file("docs/metrics.md").lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.trim().to_string();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, name, kind, ..] = cells.as_slice() {
            if let Some(name) = name.strip_prefix("`mq_").and_then(|n| n.strip_suffix('`')) {
                sections
                    .entry(section.clone())
                    .or_default()
                    .insert(format!("mq_{name}"), kind.to_string());
            }
        }
    }
    sections
}

/// Parses Prometheus text with `prometheus_client`'s parser: family name → type. Counters are
/// named with `_total`, as exported. Fails on text the parser rejects.
fn parse_exposition(text: &str) -> BTreeMap<String, String> {
    let python = std::env::var_os("TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/ferromq/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh",
        python.display()
    );
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        families = {}\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   families[f.name + ('_total' if f.type == 'counter' else '')] = f.type\n\
        print(json.dumps(families))\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every metric of `expected` is in `exported` with its type; every `mq_` family exported is
/// catalogued.
fn check(what: &str, exported: &BTreeMap<String, String>, expected: &BTreeMap<String, String>) {
    for (name, kind) in expected {
        match exported.get(name) {
            Some(found) => assert_eq!(
                found, kind,
                "{what}: {name} is a {found}, catalogued as {kind}"
            ),
            None => panic!(
                "{what} does not export {name}; it exports {:?}",
                exported.keys()
            ),
        }
    }
    let uncatalogued: Vec<&String> = exported
        .keys()
        .filter(|n| n.starts_with("mq_") && !expected.contains_key(*n))
        .collect();
    assert!(
        uncatalogued.is_empty(),
        "{what} exports metrics missing from docs/metrics.md: {uncatalogued:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_metric_is_exported_in_valid_prometheus_text() {
    let sections = catalogue();
    let service = sections["Every service"].clone();
    let mut broker_expected = sections["Broker"].clone();
    broker_expected.extend(service.clone());
    let mut nameserver_expected = sections["Nameserver"].clone();
    nameserver_expected.extend(service);

    // A 3-member group with traffic, so labelled series exist: a topic sent to, a group that
    // consumed and committed, followers the leader tracks.
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let group = start_group("metrics", 3, dir.path(), &nameserver.addr, &[]);
    let client = client(&nameserver.addr).await;
    client.create_topic("orders", 2).await.unwrap();
    send_numbered(&client.producer(), "orders", "order", 20).await;
    let mut consumer = consume_distinct(&client, "billing", "orders", 20).await;
    consumer.commit().await.unwrap();

    let leader = find_leader(&group).unwrap();
    let admin = group[leader].spec.admin.clone();
    // Lag, in-flight and follower gauges are refreshed every 10 s.
    wait_until(
        "the leader exports lag and follower series",
        Duration::from_secs(30),
        || {
            let (_, text) = http_get(&admin, "/metrics").unwrap();
            text.contains("mq_consumer_lag_messages{")
                && text.contains("mq_raft_follower_lag_entries{")
                && text.contains("mq_consumer_inflight_messages{")
        },
    )
    .await;
    let (_, text) = http_get(&admin, "/metrics").unwrap();
    check("the leader", &parse_exposition(&text), &broker_expected);
    let (_, text) = http_get(&nameserver.admin, "/metrics").unwrap();
    check(
        "the nameserver",
        &parse_exposition(&text),
        &nameserver_expected,
    );
    consumer.shutdown().await.unwrap();
}
