//! Any text as a rule file: loaded or refused with errors, never a panic; what loads builds a
//! rule set.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ratelimitd::config::parse_domain;
use ratelimitd::rules::RuleSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_domain(Path::new("fuzz.yaml"), text) {
        Ok(domain) => {
            let rules = RuleSet::new(vec![domain]);
            assert_eq!(rules.domains().len(), 1);
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
