//! The README documents every environment variable the proxy reads, with its default.
//!
//! The table between the `env-table` markers is generated from [`ENV_VARS`]; run
//! `UPDATE_README=1 cargo test -p aoai-proxy --test readme` to rewrite it after changing a variable.

use aoai_proxy::config::ENV_VARS;

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
    aoai_e2e::generated::check_block(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")),
        "<!-- env-table:",
        "<!-- /env-table -->",
        &table(),
        "UPDATE_README",
    );
}
