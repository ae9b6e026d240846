//! docs/sources.md is the spec reference: every example in it must be true.
//! Each ```json block that is a whole spec is submitted to a real node
//! (`POST /api/v1/sources`, disabled first so that nothing is fetched from
//! the example hosts) and must be accepted; each ```toml and ```yaml block
//! goes through the parser the node reads source files with. Blocks marked
//! ```json fragment are parts of a spec: they must be valid JSON.

use serde_json::{json, Value};

use crate::harness::NodeConfig;
use gleaner::domain::spec::files::{parse_source_file, FileFormat};

/// One fenced block: its info string (after the backticks) and its text.
struct Block {
    line: usize,
    info: String,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    line: i + 1,
                    info: info.trim().to_owned(),
                    text: String::new(),
                })
            }
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block in docs/sources.md");
    out
}

#[tokio::test]
async fn every_example_in_the_spec_reference_is_accepted() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sources.md");
    let markdown = std::fs::read_to_string(path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let (mut specs, mut fragments, mut files) = (0, 0, 0);
    for block in blocks(&markdown) {
        let at = format!("docs/sources.md:{} (```{})", block.line, block.info);
        let mut words = block.info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let marks: Vec<&str> = words.collect();
        match lang {
            "toml" | "yaml" => {
                let format = if lang == "toml" {
                    FileFormat::Toml
                } else {
                    FileFormat::Yaml
                };
                let parsed = parse_source_file(format, &block.text);
                assert!(parsed.is_ok(), "{at}: {:?}", parsed.err());
                files += 1;
                continue;
            }
            "json" => {}
            _ => continue,
        }
        if marks.contains(&"fragment") {
            let text = block.text.trim();
            let wrapped = if text.starts_with('{') || text.starts_with('[') {
                text.to_owned()
            } else {
                format!("{{{text}}}")
            };
            let parsed = serde_json::from_str::<Value>(&wrapped);
            assert!(parsed.is_ok(), "{at}: not valid JSON: {:?}", parsed.err());
            fragments += 1;
            continue;
        }
        assert!(marks.is_empty(), "{at}: an unknown mark");
        let mut spec: Value = serde_json::from_str(&block.text)
            .unwrap_or_else(|e| panic!("{at}: not valid JSON: {e}"));
        // Nothing is fetched from the example hosts.
        spec["enabled"] = json!(false);
        let id = spec["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no id"))
            .to_owned();
        let (status, body) = node.post("/api/v1/sources", &spec).await;
        assert_eq!(status, 201, "{at} is rejected: {body}");
        specs += 1;
        let (status, body) = node.delete(&format!("/api/v1/sources/{id}")).await;
        assert_eq!(status, 204, "{at}: {body}");
    }
    eprintln!(
        "docs/sources.md: {specs} whole specs accepted, {fragments} fragments and {files} file examples valid"
    );
    assert!(
        specs >= 4,
        "the reference shows whole specs ({specs} found)"
    );
    assert!(fragments >= 3 && files >= 2);
}
