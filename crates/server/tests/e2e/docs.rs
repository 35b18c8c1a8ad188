//! The documentation's claims are checked: every test that docs/asvs.md names exists.

use std::path::Path;

fn rust_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                rust_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_test_named_in_the_asvs_matrix_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let matrix = std::fs::read_to_string(root.join("docs/asvs.md")).unwrap();
    let mut sources = String::new();
    rust_sources(&root.join("crates"), &mut sources);
    let named: Vec<&str> = matrix
        .lines()
        .filter(|l| l.starts_with("| V"))
        .flat_map(|l| l.rsplit('|').nth(1).unwrap_or("").split('`').skip(1).step_by(2))
        .collect();
    assert!(named.len() > 10, "the matrix names too few tests: {named:?}");
    for name in named {
        assert!(sources.contains(&format!("fn {name}(")), "docs/asvs.md names `{name}`, which is not a test");
    }
}
