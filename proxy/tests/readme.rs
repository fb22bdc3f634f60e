//! The README documents every environment variable the proxy reads, with its default.
//!
//! The table between the `env-table` markers is generated from [`ENV_VARS`]; run
//! `UPDATE_README=1 cargo test -p aoai-proxy --test readme` to rewrite it after changing a variable.

use aoai_proxy::config::ENV_VARS;

const START: &str = "<!-- env-table:";
const END: &str = "<!-- /env-table -->";

fn table() -> String {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for var in ENV_VARS {
        let default = var.default.map_or("—".to_string(), |d| format!("`{d}`"));
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            var.name,
            default,
            var.help.replace('|', "\\|")
        ));
    }
    table
}

#[test]
fn readme_lists_every_environment_variable_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md at the repository root");
    let start = readme
        .find(START)
        .expect("README has the env-table start marker");
    let body_start = start + readme[start..].find('\n').expect("marker line ends") + 1;
    let end = readme
        .find(END)
        .expect("README has the env-table end marker");
    let expected = table();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{}{}", &readme[..body_start], expected, &readme[end..]);
        std::fs::write(path, updated).expect("rewrite README.md");
        return;
    }
    assert_eq!(
        readme[body_start..end],
        expected,
        "README's environment table is stale: run UPDATE_README=1 cargo test -p aoai-proxy --test readme"
    );
}
