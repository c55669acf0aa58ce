//! The fuzz corpus as regression tests: every input the fuzzers kept (`fuzz/corpus/`),
//! every crash they found (`fuzz/regressions/`, kept after the fix) and the model files
//! of every kind in `tests/fixtures` go through the fuzzed entry points, which must
//! return without a panic. Runs in `cargo test` without cargo-fuzz.

use std::path::Path;

include!("../../../fuzz/harness.rs");

/// The files of `folders` (relative to the repository root), sorted; missing folders are skipped.
fn inputs(folders: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<PathBuf> = folders
        .iter()
        .filter_map(|f| std::fs::read_dir(root.join(f)).ok())
        .flatten()
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn load_file_corpus() {
    let files = inputs(&[
        "fuzz/corpus/load_file",
        "fuzz/regressions/load_file",
        "fuzz/seeds/load_file",
        "tests/fixtures/pre_issue9",
    ]);
    assert!(files.len() >= 16, "{} files", files.len());
    for file in files {
        load_file(&std::fs::read(&file).unwrap());
    }
}

#[test]
fn build_and_project_corpus() {
    let files = inputs(&[
        "fuzz/corpus/build_and_project",
        "fuzz/regressions/build_and_project",
        "fuzz/seeds/build_and_project",
    ]);
    assert!(!files.is_empty());
    for file in files {
        build_and_project(&std::fs::read(&file).unwrap());
    }
}
