//! The README documents every environment variable the proxy reads, with its default, and every
//! metric it serves.
//!
//! The table between the `env-table` markers is generated from [`ENV_VARS`]; run
//! `UPDATE_README=1 cargo test -p aoai-proxy --test readme` to rewrite it after changing a variable.

mod common;

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

#[tokio::test]
async fn readme_lists_every_metric() {
    let upstream = aoai_e2e::openai::MockOpenAi::start().await;
    let proxy =
        common::TestProxy::start(&[("API_BASE_URL", &upstream.url())], common::fixed_token()).await;
    // One answer and one stream, so that the families with labels have a series.
    for stream in [false, true] {
        let chat = format!("{}/openai/deployments/gpt-4o/chat/completions", proxy.url);
        let body = serde_json::json!({"messages": [], "stream": stream});
        aoai_e2e::client::post_json(&chat, &[], &body).await;
    }
    let metrics = aoai_e2e::client::get(&format!("{}/metrics", proxy.admin_url), &[])
        .await
        .text();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut missing = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE <name> <type>");
        let documented = match kind {
            "counter" => format!("`{name}_total`"),
            "info" => format!("`{name}_info`"),
            _ => format!("`{name}`"),
        };
        if !readme.contains(&format!("| {documented} |")) {
            missing.push(documented);
        }
    }
    assert!(
        missing.is_empty(),
        "the README's metrics table lacks {missing:?}"
    );
    proxy.stop().await;
}
