//! `make test` and `make demo` share one build of the dependencies: the dev-dependencies
//! turn on no feature of a crate that `cargo build` also compiles. (With resolver 2 a
//! feature that only a dev-dependency asks for is off in `cargo build` and on in
//! `cargo test`, and the crate and everything that depends on it are compiled twice.)
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `package version -> feature sets` of saln's dependency tree, with or without the
/// dev-dependencies (a crate built for the build scripts and for the target may have two).
fn features(dev: bool) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let edges = if dev {
        "normal,build,dev"
    } else {
        "normal,build"
    };
    let o = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "saln",
            "--prefix",
            "none",
        ])
        .args(["-e", edges, "-f", "{p}|{f}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if let Some((p, f)) = l.trim_end_matches(" (*)").split_once('|') {
            let p = p.split(" (").next().unwrap_or(p).to_string();
            map.entry(p).or_default().insert(f.to_string());
        }
    }
    map
}

#[test]
fn dev_dependencies_change_no_feature_of_a_shared_crate() {
    let build = features(false);
    let test = features(true);
    let differ: Vec<String> = build
        .iter()
        .filter(|(p, f)| test.get(*p).is_some_and(|t| t != *f))
        .map(|(p, f)| format!("{p}: build {f:?}, test {:?}", test[p]))
        .collect();
    assert!(
        differ.is_empty(),
        "the dev-dependencies turn on features of crates `cargo build` compiles too, so \
         `make demo` after `make test` compiles them again; turn them on in [dependencies] \
         (see Cargo.toml):\n{}",
        differ.join("\n")
    );
}
