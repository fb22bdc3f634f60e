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
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find("<!-- annotation-table:")
        .expect("README has the annotation-table marker");
    let body_start = start + readme[start..].find('\n').unwrap() + 1;
    let end = readme
        .find("<!-- /annotation-table -->")
        .expect("README has the end marker");
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(
            path,
            format!("{}{}{}", &readme[..body_start], table, &readme[end..]),
        )
        .unwrap();
        return;
    }
    assert!(
        readme[body_start..end] == table,
        "README's annotation reference is stale: run UPDATE_README=1 cargo test -p aoai-operator --test readme"
    );
}
