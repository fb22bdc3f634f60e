//! Generated parts of committed files (README tables, the chart's RBAC rules): tests regenerate
//! them from the code and fail when the committed text differs.

use std::path::Path;

/// Between the line holding `begin` and the line starting with `end`, the file at `path` must hold
/// `body`. With the environment variable `update` set, rewrites that part instead.
pub fn check_block(path: &Path, begin: &str, end: &str, body: &str, update: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = text
        .find(begin)
        .unwrap_or_else(|| panic!("{} has no {begin:?}", path.display()));
    let body_start = start + text[start..].find('\n').expect("the marker line ends") + 1;
    let stop = text
        .find(end)
        .unwrap_or_else(|| panic!("{} has no {end:?}", path.display()));
    if std::env::var_os(update).is_some() {
        let updated = format!("{}{}{}", &text[..body_start], body, &text[stop..]);
        std::fs::write(path, updated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    assert!(
        text[body_start..stop] == *body,
        "{} is stale between {begin:?} and {end:?}: run the test with {update}=1\nexpected:\n{body}",
        path.display()
    );
}
