//! A recorder for the `metrics` facade that keeps the last value of every counter and gauge the
//! SDK records, so a test can read back what an application's exporter would have seen.
//!
//! The recorder is process-wide (the facade has one global recorder): exact assertions hold
//! under `cargo nextest`, which runs every test in a process of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, Once};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// Every counter and gauge recorded in this process, by name and labels.
#[derive(Default)]
pub struct CapturedMetrics {
    values: Mutex<BTreeMap<String, Arc<Value>>>,
}

static CAPTURED: LazyLock<CapturedMetrics> = LazyLock::new(CapturedMetrics::default);

/// Installs the capturing recorder for this process (the first call does) and returns it.
pub fn capture_metrics() -> &'static CapturedMetrics {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        metrics::set_global_recorder(Global).expect("no other metrics recorder in the tests");
    });
    &CAPTURED
}

impl CapturedMetrics {
    /// The value of a counter or gauge, 0 if never recorded. `key` as Prometheus shows it:
    /// `name`, or `name{label="value",…}` with the labels sorted by name.
    pub fn value(&self, key: &str) -> f64 {
        let values = self.values.lock().unwrap();
        values
            .get(key)
            .map_or(0.0, |value| *value.0.lock().unwrap())
    }

    fn handle(&self, key: &Key) -> Arc<Value> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|label| (label.key().to_string(), label.value().to_string()))
            .collect();
        labels.sort();
        let mut values = self.values.lock().unwrap();
        values
            .entry(render(key.name(), labels))
            .or_default()
            .clone()
    }
}

/// `name{a="1",b="2"}`, labels sorted, as Prometheus would show it.
fn render(name: &str, labels: Vec<(String, String)>) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let labels: Vec<String> = labels
        .into_iter()
        .map(|(key, value)| format!("{key}={value:?}"))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// One metric's current value.
#[derive(Default)]
struct Value(Mutex<f64>);

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap() += value as f64;
    }

    fn absolute(&self, value: u64) {
        let mut current = self.0.lock().unwrap();
        *current = current.max(value as f64);
    }
}

impl GaugeFn for Value {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap() += value;
    }

    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap() -= value;
    }

    fn set(&self, value: f64) {
        *self.0.lock().unwrap() = value;
    }
}

/// The global recorder: hands out handles onto [`CAPTURED`]; histograms are not kept.
#[derive(Debug)]
struct Global;

impl Recorder for Global {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(CAPTURED.handle(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(CAPTURED.handle(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
