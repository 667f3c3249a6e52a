//! The short chaos run of CI: 80 s of faults every 10 s against a three-member group under load,
//! each fault of the rotation once (`scripts/chaos.sh` runs the ten-minute version).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferromq_integration_tests::chaos::{run, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_leader_kills_pauses_and_crashes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = ChaosConfig {
        duration: Duration::from_secs(80),
        fault_interval: Duration::from_secs(10),
        producers: 4,
        kill_all: true,
        drain_timeout: Duration::from_secs(60),
        network_faults: true,
    };
    let report = run(config, dir.path()).await;
    eprintln!("{report}");
    assert!(
        report.acknowledged > 1000,
        "too little load to mean anything: {}",
        report.acknowledged
    );
    assert!(report.faults.len() >= 7, "faults: {:?}", report.faults);
    assert!(report.passed(), "{report}");
    assert!(!report.failover_ms.is_empty());
    assert!(
        report.failover_p99_ms() <= 10_000,
        "failover p99 {} ms",
        report.failover_p99_ms()
    );
}
