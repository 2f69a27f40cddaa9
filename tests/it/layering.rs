//! The layering of `src/`: imports only go down, and between stages only upstream.
//!
//! The table below is the architecture, one line per top-level module of `src/`, with the
//! modules it may name (`crate::X`). Reading it top to bottom is reading the crate bottom to
//! top: the kit every stage uses, the stages in the order data flows through them, then what
//! wires them together. A `use crate::...` (or a `crate::X::` path, doc links included) that
//! is not allowed here fails this test, so an import circle cannot come back unnoticed.
//! `#[cfg(test)]` modules at the end of a file may reach anywhere (tests build whole
//! pipelines).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(module, modules it may use)`. Each entry may use only modules listed above it.
const LAYERS: &[(&str, &[&str])] = &[
    // The kit: knows no stage.
    ("error", &[]),
    ("rng", &[]),
    ("io", &["error"]),
    ("device", &["error"]),
    ("pixel", &["error"]),
    ("stage", &["error"]),
    ("model", &["error", "io"]),
    // The stages, in the order data flows; each may use the kit and the stages before it.
    ("source", &["error", "rng", "io", "pixel", "stage"]),
    ("augment", &["error", "rng", "pixel", "source"]),
    ("batch", &["error", "rng", "stage", "source", "augment"]),
    (
        "select",
        &["error", "rng", "device", "stage", "model", "batch"],
    ),
    (
        "extract",
        &[
            "error", "rng", "io", "device", "pixel", "stage", "model", "source", "augment",
            "batch", "select",
        ],
    ),
    (
        "train",
        &[
            "error", "rng", "device", "stage", "model", "source", "augment", "batch", "select",
            "extract",
        ],
    ),
    (
        "export",
        &["error", "io", "stage", "source", "batch", "select"],
    ),
    // What knows every stage: the YAML's aggregate, the report, the wiring and run modes,
    // the embedding API, the evaluation.
    (
        "config",
        &[
            "error", "device", "stage", "model", "source", "augment", "batch", "select", "extract",
            "train", "export",
        ],
    ),
    (
        "report",
        &[
            "error", "io", "stage", "source", "batch", "select", "train", "export", "config",
        ],
    ),
    (
        "pipeline",
        &[
            "error", "rng", "io", "device", "stage", "model", "source", "augment", "batch",
            "select", "extract", "train", "export", "config", "report",
        ],
    ),
    (
        "loader",
        &[
            "error", "stage", "source", "augment", "batch", "select", "export", "config", "report",
            "pipeline",
        ],
    ),
    (
        "eval",
        &[
            "error", "io", "stage", "device", "source", "augment", "batch", "select", "extract",
            "train", "config", "report", "pipeline",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::X` a text names, with the line it is on: plain paths, and each item of a
/// `use crate::{a::b, c}` group.
fn crate_refs(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let line_at = |pos: usize| text[..pos].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut from = 0;
    while let Some(p) = text[from..].find("crate::") {
        let at = from + p;
        from = at + "crate::".len();
        // `saln_crate::x` or `some_crate::x` are other names.
        if at > 0 {
            let before = text.as_bytes()[at - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let rest = &text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.push((name, line_at(at)));
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((name, line_at(at)));
            }
        }
    }
    out
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    // The table itself only points down.
    for (i, (m, deps)) in LAYERS.iter().enumerate() {
        let below: BTreeSet<&str> = LAYERS[..i].iter().map(|(n, _)| *n).collect();
        for d in *deps {
            assert!(
                below.contains(d),
                "table: {m} may use {d}, which is not below it"
            );
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen_modules = BTreeSet::new();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        seen_modules.insert(module.clone());
        let Some(deps) = allowed.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in the layering table (tests/it/layering.rs)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = match text.find("#[cfg(test)]") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        for (name, line) in crate_refs(code) {
            let is_module = allowed.contains_key(name.as_str());
            if is_module && name != module && !deps.contains(name.as_str()) {
                violations.push(format!(
                    "{}:{line}: `{module}` uses `crate::{name}`, which the layering table does \
                     not allow (only: {})",
                    file.display(),
                    deps.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    // Every module of the table exists, so the table cannot rot either.
    for (m, _) in LAYERS {
        assert!(
            seen_modules.contains(*m),
            "layering table names `{m}`, which src/ does not have"
        );
    }
    assert!(
        violations.is_empty(),
        "imports that break the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    let text = "use crate::{error::Error, stage::Cancel};\nfn f() { crate::pipeline::run(); }\n\
                use my_crate::x; // another crate\n";
    let refs = crate_refs(text);
    assert_eq!(
        refs,
        vec![
            ("error".to_string(), 1),
            ("stage".to_string(), 1),
            ("pipeline".to_string(), 2)
        ]
    );
}
