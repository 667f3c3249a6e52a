//! Fuzzes the admin APIs of a running nameserver and broker from the OpenAPI documents they
//! serve (the ones checked in under docs/openapi/), with schemathesis: no request, however
//! malformed, may get a 5xx, and every answer must match the document.
//!
//! schemathesis comes from PyPI, installed by scripts/install-deps.sh; scripts/env.sh points
//! `SCHEMATHESIS_BIN` at it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use ferromq_integration_tests::{http_get, start_nameserver, Broker};

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/ferromq/venv/bin/schemathesis")
        });
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run scripts/install-deps.sh",
        path.display()
    );
    path
}

/// Runs schemathesis against the document `admin` serves; panics with its report on failure.
fn fuzz(admin: &str, work_dir: &std::path::Path) {
    let document = format!("http://{admin}/v1/openapi.json");
    let out = Command::new(schemathesis())
        .current_dir(work_dir)
        .args(["run", &document])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "40", "--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems in {document}:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really exercised the API: every operation was tested.
    let tested = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert!(
        !tested.is_empty() && tested != "0",
        "no operation tested:\n{report}"
    );
}

#[test]
fn fuzzing_the_admin_apis_finds_no_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let nameserver = start_nameserver(dir.path(), &[]);
    let broker = Broker::start(&dir.path().join("b"), &nameserver.addr, dir.path(), &[]);

    fuzz(&broker.spec.admin, dir.path());
    fuzz(&nameserver.admin, dir.path());

    // Still healthy afterwards.
    assert_eq!(http_get(&broker.spec.admin, "/readyz").unwrap().0, 200);
    let log = broker.process.log();
    assert!(!log.contains("panicked"), "the broker panicked:\n{log}");
}
