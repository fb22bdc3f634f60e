//! The README's annotation reference is generated from `annotations::ANNOTATIONS`;
//! `UPDATE_README=1 cargo test -p aoai-operator --test readme` rewrites it.

use aoai_operator::annotations::ANNOTATIONS;

#[test]
fn readme_lists_every_annotation_with_its_default() {
    let mut table =
        String::from("| annotation | set by | default | meaning |\n|---|---|---|---|\n");
    for a in ANNOTATIONS {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            a.name, a.set_by, a.default, a.meaning
        ));
    }
    aoai_e2e::generated::check_block(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")),
        "<!-- annotation-table:",
        "<!-- /annotation-table -->",
        &table,
        "UPDATE_README",
    );
}
