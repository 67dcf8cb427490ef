//! The version lives only in Cargo.toml: everything that repeats it must follow.

use std::path::Path;
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn version_flag_prints_the_crate_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_serin"))
        .arg("--version")
        .output()
        .expect("running serin --version");
    assert!(out.status.success(), "serin --version failed: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("serin {VERSION}")
    );
}

#[test]
fn changelog_has_an_entry_for_the_version() {
    let text = repo_file("CHANGELOG.md");
    let heading = format!("## [{VERSION}]");
    assert!(
        text.lines().any(|l| l.trim() == heading),
        "CHANGELOG.md has no `{heading}` section: add one when bumping Cargo.toml"
    );
}

#[test]
fn install_manifests_use_the_version_as_image_tag() {
    let text = repo_file("kustomize/operator/kustomization.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kustomization.yaml parses");
    let tags: Vec<&str> = doc["images"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|i| i["name"].as_str() == Some("serin"))
        .filter_map(|i| i["newTag"].as_str())
        .collect();
    assert_eq!(
        tags,
        vec![VERSION],
        "kustomize/operator/kustomization.yaml must tag image serin with the Cargo.toml version"
    );
}
