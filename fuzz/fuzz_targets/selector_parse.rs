//! The SQL selector parser takes text from the network (a consumer's pull request): it must
//! never panic, loop or recurse without bound, whatever the text.

#![no_main]

use std::collections::BTreeMap;

use ferromq_protocol::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = Selector::parse(text) {
        let mut properties = BTreeMap::new();
        properties.insert("a".to_string(), "5".to_string());
        properties.insert("region".to_string(), "eu".to_string());
        let _ = selector.matches(&properties, Some("TagA"));
    }
});
