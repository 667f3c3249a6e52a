//! `ferromq-chaos`: the long chaos run (see `ferromq_integration_tests::chaos`), used by
//! `scripts/chaos.sh`. Prints the checker's table and ends with the one-line summary; exits 1
//! when anything was lost, reordered or diverged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferromq_integration_tests::chaos::{run, ChaosConfig};

fn usage() -> ! {
    eprintln!("usage: ferromq-chaos [--minutes N] [--fault-interval-secs S] [--keep DIR]");
    std::process::exit(2);
}

fn main() {
    let mut config = ChaosConfig::default();
    let mut keep = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--minutes" => {
                let minutes: f64 = value().parse().unwrap_or_else(|_| usage());
                config.duration = Duration::from_secs_f64(minutes * 60.0);
            }
            "--fault-interval-secs" => {
                config.fault_interval =
                    Duration::from_secs(value().parse().unwrap_or_else(|_| usage()));
            }
            "--keep" => keep = Some(std::path::PathBuf::from(value())),
            _ => usage(),
        }
    }
    let temporary = tempfile::tempdir().expect("temporary directory");
    let dir = keep
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("run directory");
    eprintln!(
        "chaos: {:?} of faults every {:?}, data and logs in {}",
        config.duration,
        config.fault_interval,
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run(config, &dir));
    println!("{report}");
    std::process::exit(if report.passed() { 0 } else { 1 });
}
