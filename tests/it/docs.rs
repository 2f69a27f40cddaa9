//! Documentation checked against the code: every configuration key a pipeline can have is
//! documented in docs/config.md, and every YAML block in the docs parses.
use std::collections::BTreeSet;

use saln::config::PipelineConfig;

/// Dotted paths of every key in a JSON value (list items share their list's path).
fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                paths(item, prefix, out);
            }
        }
        _ => {}
    }
}

/// Every key of the fully defaulted configuration, with each optional section filled in by
/// the example pipelines and the examples of docs/sources.md, must appear in docs/config.md
/// as `` `key` ``.
#[test]
fn every_config_key_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/config.md")).unwrap();
    let mut keys = BTreeSet::new();
    let mut sources = vec!["source:\n  idx: { dir: /x }\n".to_string()];
    for e in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            sources.push(std::fs::read_to_string(p).unwrap());
        }
    }
    // The YAML examples of docs/sources.md show the other source formats, sharding and the
    // loader-only mode; fragments without a `source` get a minimal one.
    let sources_doc = std::fs::read_to_string(root.join("docs/sources.md")).unwrap();
    for block in sources_doc.split("```yaml\n").skip(1) {
        let b = block.split("```").next().unwrap();
        sources.push(if b.contains("source:") {
            b.to_string()
        } else {
            format!("source:\n  idx: {{ dir: /x }}\n{b}")
        });
    }
    for text in sources {
        // Eval files wrap a pipeline; only plain pipelines are read here.
        let Ok(cfg) = PipelineConfig::from_yaml_str(&text, "doc") else {
            continue;
        };
        paths(&serde_json::to_value(&cfg).unwrap(), "", &mut keys);
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document: {missing:#?}"
    );
}
