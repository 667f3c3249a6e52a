//! The Grafana dashboard and the Prometheus alert rules under `deploy/` name only metrics that
//! exist: every `mq_*` name they use is in the catalogue (docs/metrics.md), and the broker's
//! own series of those a running broker exports at once are really there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use ferromq_integration_tests::{http_get, start_nameserver, Broker};

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

    // The always-present ones are exported by a running broker.
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);
    let (_, exposition) = http_get(&broker.spec.admin, "/metrics").unwrap();
    let exported = metric_names(&exposition);
    for name in [
        "mq_raft_is_leader",
        "mq_broker_info",
        "mq_commitlog_bytes",
        "mq_raft_leader_changes_total",
        "mq_storage_disk_free_bytes",
        "mq_storage_disk_total_bytes",
    ] {
        assert!(exported.contains(name), "{name} not exported");
    }
}
