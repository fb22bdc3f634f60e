//! Configuration parsing: any environment (NAME=VALUE lines) gives a Config or one error naming a
//! variable the proxy reads; never a panic.
#![no_main]
use std::collections::HashMap;

use aoai_proxy::config::{Config, ENV_VARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut env = HashMap::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once('=') {
            // Mostly the proxy's own names, so the fuzzer reaches the parsers.
            let name = ENV_VARS
                .iter()
                .find(|v| v.name.eq_ignore_ascii_case(name) || name.len() == 1 && v.name.starts_with(name))
                .map_or(name.to_string(), |v| v.name.to_string());
            env.insert(name, value.to_string());
        }
    }
    if let Err(e) = Config::from_lookup(|name| env.get(name).cloned()) {
        assert!(ENV_VARS.iter().any(|v| v.name == e.variable), "unknown variable {}", e.variable);
        assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
    }
});
