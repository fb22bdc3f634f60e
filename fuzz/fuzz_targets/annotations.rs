//! Annotation parsing: any annotations give overrides or one error naming the annotation; never a
//! panic; accepted ports are in range.
#![no_main]
use std::collections::BTreeMap;

use aoai_operator::annotations::{Overrides, requested_proxy};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["inject", "port", "admin-port", "cpu-request", "cpu-limit", "memory-request", "memory-limit", "log-level", "native-sidecar", "status", "config-hash"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut annotations = BTreeMap::new();
    for line in text.lines() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let name = match name.parse::<usize>() {
            Ok(i) => format!("aoai-proxy.io/{}", NAMES[i % NAMES.len()]),
            Err(_) => name.to_string(),
        };
        annotations.insert(name, value.to_string());
    }
    let _ = requested_proxy(&annotations);
    match Overrides::parse(&annotations) {
        Ok(o) => {
            for port in [o.port, o.admin_port].into_iter().flatten() {
                assert!((1024..=65535).contains(&port));
            }
        }
        Err(e) => assert!(annotations.contains_key(&e.name)),
    }
});
