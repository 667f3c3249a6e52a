//! The checked-in OpenAPI document (docs/openapi/broker.json) is the one the code generates.
//! `FERROMQ_UPDATE_OPENAPI=1 cargo test -p ferromq-broker --test openapi` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    // Read at run time: a test binary reused from another checkout reads this checkout's file.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let path = root.join("../../docs/openapi/broker.json");
    let generated = ferromq_broker::openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var("FERROMQ_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date: run FERROMQ_UPDATE_OPENAPI=1 cargo test -p ferromq-broker --test openapi",
        path.display()
    );
}
