//! Every Serin object in the docs' YAML blocks passes `serin check`: a tutorial that
//! shows a Canary the operator would refuse is worse than none.

use std::path::{Path, PathBuf};

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The bodies of the fenced ```yaml blocks of a Markdown text.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```yaml") => current = Some(String::new()),
            Some(body) if fence.starts_with("```") => {
                blocks.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_canary_in_the_docs_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut files);
    files.sort();
    let mut errors = Vec::new();
    let mut checked = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("docs are readable");
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (i, block) in yaml_blocks(&text).iter().enumerate() {
            let report =
                serin::cli::convert::check(&format!("{rel} block {i}"), block, "kubernetes");
            checked.extend(report.ok);
            errors.extend(report.errors);
        }
    }
    assert!(
        errors.is_empty(),
        "docs with invalid objects:\n{}",
        errors.join("\n")
    );
    // Each provider tutorial carries a Canary; a block the parser missed would make
    // this test pass vacuously.
    for provider in [
        "gatewayapi",
        "linkerd",
        "istio",
        "traefik",
        "nginx",
        "kubernetes",
        "smi",
    ] {
        let prefix = format!("docs/tutorials/{provider}.md block");
        assert!(
            checked
                .iter()
                .any(|c| c.starts_with(&prefix) && c.contains("Canary")),
            "no Canary checked in {provider}'s tutorial; checked: {checked:#?}"
        );
    }
}

#[test]
fn yaml_blocks_are_found_and_others_skipped() {
    let md = "text\n```yaml\na: 1\n```\n```sh\nls\n```\n  ```yaml\nb: 2\n  ```\n";
    assert_eq!(yaml_blocks(md), ["a: 1\n", "b: 2\n"]);
}
