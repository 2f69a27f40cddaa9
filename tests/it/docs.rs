//! Documentation checked against the code. Every configuration key a pipeline can have is
//! documented in docs/config.md; and everything README.md and docs/ write that names a part
//! of the repository is true of it: repository paths exist, `saln-pipe` commands and flags
//! parse with the command line's own parser, `make` targets are the Makefile's, dotted
//! configuration keys are keys of the config types, YAML blocks validate, and the figure
//! blocks are what `scripts/figures.py` writes from the committed reports.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use saln::config::PipelineConfig;
use saln::eval::EvalConfig;

/// The command line's grammar, shared with the binary (`src/bin/saln-pipe/cli.rs`): the
/// docs are checked against the parser itself, not against a copy of its flag list.
#[allow(dead_code)]
#[path = "../../src/bin/saln-pipe/cli.rs"]
mod cli;

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

// ---- the documentation test: README.md and docs/ against the tree, the CLI, the Makefile
// and the config types ----

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A page: its path relative to the repository root, and its text.
struct Page {
    path: PathBuf,
    text: String,
}

/// README.md and every `.md` under docs/.
fn pages() -> Vec<Page> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
        .into_iter()
        .map(|p| Page {
            text: std::fs::read_to_string(&p).unwrap(),
            path: p.strip_prefix(root()).unwrap().to_path_buf(),
        })
        .collect()
}

/// What a page says, piece by piece, with its 1-based line.
enum Piece {
    /// An inline code span; `bases` are the folders named in the first cell of the table
    /// row it sits in (the "Where things live" table names files relative to its row).
    Code {
        text: String,
        line: usize,
        bases: Vec<PathBuf>,
    },
    /// A Markdown link's target.
    Link { target: String, line: usize },
    /// A fenced block: its info string (`yaml`, `sh`, ...) and its text.
    Block {
        info: String,
        text: String,
        line: usize,
    },
}

/// The code spans of one line of prose.
fn code_spans(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(a) = rest.find('`') {
        let after = &rest[a + 1..];
        let Some(b) = after.find('`') else { break };
        if b > 0 {
            out.push(after[..b].to_string());
        }
        rest = &after[b + 1..];
    }
    out
}

fn pieces(page: &Page) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut block: Option<(String, String, usize)> = None;
    let mut indent = 0;
    for (k, line) in page.text.lines().enumerate() {
        let n = k + 1;
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match block.take() {
                Some((info, text, line)) => out.push(Piece::Block { info, text, line }),
                None => {
                    indent = line.len() - t.len();
                    block = Some((info.trim().to_string(), String::new(), n));
                }
            }
            continue;
        }
        if let Some((_, text, _)) = block.as_mut() {
            // A block inside a list item is indented as its fence is: take that off.
            let cut = line.len() - line.trim_start().len();
            text.push_str(&line[cut.min(indent)..]);
            text.push('\n');
            continue;
        }
        let bases: Vec<PathBuf> = if let Some(row) = t.strip_prefix('|') {
            let first = row.split('|').next().unwrap_or("");
            code_spans(first)
                .into_iter()
                .filter(|s| s.ends_with('/'))
                .flat_map(|s| {
                    Path::new(&s)
                        .ancestors()
                        .filter(|a| !a.as_os_str().is_empty())
                        .map(Path::to_path_buf)
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            Vec::new()
        };
        for text in code_spans(line) {
            out.push(Piece::Code {
                text,
                line: n,
                bases: bases.clone(),
            });
        }
        let mut rest = line;
        while let Some(a) = rest.find("](") {
            let after = &rest[a + 2..];
            let Some(b) = after.find(')') else { break };
            out.push(Piece::Link {
                target: after[..b].to_string(),
                line: n,
            });
            rest = &after[b..];
        }
    }
    out
}

/// File types a repository path can end with (a span with a slash but none of these, and
/// no trailing slash, is not taken for a path: `torch.jit.trace/script`).
const EXTENSIONS: &[&str] = &[
    "rs",
    "md",
    "yaml",
    "yml",
    "sh",
    "py",
    "toml",
    "json",
    "png",
    "txt",
    "csv",
    "jsonl",
    "parquet",
    "safetensors",
    "pt",
    "lock",
    "gz",
];

/// Words the docs use as placeholders inside a path (`OUTPUT/runs/NAME.json`).
const PLACEHOLDERS: &[&str] = &["OUTPUT", "NAME", "RATIO", "DIR", "EEEE", "PPPP", "FILE"];

/// Paths the docs name that are not in the repository by design, with the reason. Each
/// must still be written where it is listed (a stale entry fails too).
const NOT_IN_THE_REPOSITORY: &[(&str, &str, &str)] = &[
    (
        "docs/gpu.md",
        "bin/saln-pipe.gz",
        "inside the folder `scripts/gpu-check.sh prepare` writes",
    ),
    (
        "docs/gpu.md",
        "data/fashion-mnist/",
        "inside the folder `scripts/gpu-check.sh prepare` writes",
    ),
    (
        "docs/gpu.md",
        "models/tiny.pt",
        "inside the folder `scripts/gpu-check.sh prepare` writes",
    ),
    (
        "docs/gpu.md",
        "models/resnet18-f16.safetensors",
        "inside the folder `scripts/gpu-check.sh prepare` writes",
    ),
    (
        "docs/gpu.md",
        "gpu-check-logs/",
        "written by `gpu-check.sh run` beside its table",
    ),
    (
        "docs/sources.md",
        "cifar-10-batches-bin/",
        "the folder of the CIFAR-10 archive, on the user's disk",
    ),
];

/// Whether `s` reads as a repository path (a file with a known type, or a folder).
fn path_like(s: &str, in_table: bool) -> bool {
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.*/-".contains(c));
    let has_ext = s
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && EXTENSIONS.contains(&ext));
    chars_ok
        && !s.starts_with('/')
        && !s.starts_with("..")
        && s != "/"
        && ((s.contains('/') && (s.ends_with('/') || has_ext)) || (in_table && has_ext))
}

/// Paths the repository does not hold by construction: build outputs and other ignored
/// folders (the root-anchored entries of .gitignore), templates.
fn outside_the_tree(s: &str) -> bool {
    let ignore = std::fs::read_to_string(root().join(".gitignore")).unwrap_or_default();
    let first = s.split('/').next().unwrap_or("");
    let ignored = ignore.lines().any(|l| {
        l.strip_prefix('/')
            .is_some_and(|p| p.trim_end_matches('/') == first)
    });
    let template = s
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|tok| PLACEHOLDERS.iter().any(|p| tok.ends_with(p)));
    ignored || template
}

/// `*` in the last component matches any run of characters.
fn exists(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    match name {
        Some(name) if name.contains('*') => {
            let (pre, post) = name.split_once('*').unwrap();
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                })
            })
        }
        _ => path.exists(),
    }
}

/// Checks a path a page names; `bases` are further folders it may be relative to.
fn check_path(page: &Page, line: usize, s: &str, bases: &[PathBuf], problems: &mut Vec<String>) {
    if outside_the_tree(s) {
        return;
    }
    let dir = page.path.parent().unwrap_or(Path::new(""));
    // A table row's folders are relative to the root or to the page, as any path.
    let found = [PathBuf::new(), dir.to_path_buf()]
        .iter()
        .cloned()
        .chain(bases.iter().flat_map(|b| [b.clone(), dir.join(b)]))
        .any(|b| exists(&root().join(b).join(s)));
    let exempt = NOT_IN_THE_REPOSITORY
        .iter()
        .any(|(p, x, _)| Path::new(p) == page.path && *x == s);
    if !found && !exempt {
        problems.push(format!(
            "{}:{line}: `{s}` is not in the repository",
            page.path.display()
        ));
    }
}

/// Every command and flag of a `saln-pipe ...` invocation (the words after `saln-pipe`)
/// must parse with the binary's own clap parser.
fn check_saln_pipe(words: &[&str], at: &str, problems: &mut Vec<String>) {
    let top = cli::Cli::command();
    let mut cmd = &top;
    let mut path = vec!["saln-pipe".to_string()];
    let mut positional_seen = false;
    for w in words {
        let w = w.trim_matches(|c| "[]()<>".contains(c));
        if w.is_empty() || w == "..." {
            continue;
        }
        if let Some(flag) = w.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or("");
            let known = flag == "help"
                || (flag == "version" && path.len() == 1)
                || cmd.get_arguments().any(|a| a.get_long() == Some(flag));
            if !known {
                problems.push(format!("{at}: `{}` has no flag `--{flag}`", path.join(" ")));
            }
            continue;
        }
        if cmd.has_subcommands() && !positional_seen {
            match cmd.find_subcommand(w) {
                Some(sub) => {
                    cmd = sub;
                    path.push(w.to_string());
                }
                None => {
                    problems.push(format!(
                        "{at}: `{} {w}`: `{w}` is not a command of `{}`",
                        path.join(" "),
                        path.join(" ")
                    ));
                    return;
                }
            }
            continue;
        }
        positional_seen = true;
    }
}

/// The targets of the Makefile (rules `name:`, not variables `name :=`).
fn make_targets() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("Makefile")).unwrap();
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if l.starts_with(['\t', '#', ' ']) {
            continue;
        }
        let Some((names, rest)) = l.split_once(':') else {
            continue;
        };
        if rest.starts_with('=') || names.contains('=') || names.contains('$') {
            continue;
        }
        out.extend(names.split_whitespace().map(str::to_string));
    }
    out
}

/// The words of a command line after `word`, up to a shell operator or comment.
fn words_after<'a>(line: &'a str, word: &str) -> Vec<Vec<&'a str>> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let mut out = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        // `target/release/saln-pipe run ...` is `saln-pipe run ...` too.
        if *t == word || t.ends_with(&format!("/{word}")) {
            let rest: Vec<&str> = toks[k + 1..]
                .iter()
                .take_while(|t| {
                    !["|", "&&", "||", ";", ">", "2>", "#"].contains(t) && !t.starts_with('#')
                })
                .copied()
                .collect();
            out.push(rest);
        }
    }
    out
}

fn check_command_line(
    line: &str,
    at: &str,
    targets: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    for words in words_after(line, "saln-pipe") {
        check_saln_pipe(&words, at, problems);
    }
    for words in words_after(line, "make") {
        for w in words
            .iter()
            .take_while(|w| !w.starts_with('-') && !w.contains('='))
        {
            if !targets.contains(*w) {
                problems.push(format!(
                    "{at}: `make {w}`: the Makefile has no target `{w}`"
                ));
            }
        }
    }
}

/// The message of parsing `yaml` as a pipeline (or, `eval`, an eval file), if it failed.
fn parse_message(yaml: &str, eval: bool) -> Option<String> {
    if eval {
        EvalConfig::from_yaml_str(yaml, "doc")
            .err()
            .map(|e| e.to_string())
    } else {
        PipelineConfig::from_yaml_str(yaml, "doc")
            .err()
            .map(|e| e.to_string())
    }
}

/// The top-level keys of a config type, from serde's own "unknown field" message.
fn top_level_keys(eval: bool) -> BTreeSet<String> {
    let msg = parse_message("zz_no_such_key: 1\n", eval).unwrap();
    let list = msg
        .split_once("expected one of")
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("serde's unknown-field message changed: {msg}"));
    let keys: BTreeSet<String> = list
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .map(|k| k.trim().trim_matches('`').to_string())
        .filter(|k| !k.is_empty())
        .collect();
    assert!(keys.contains("selection") || keys.contains("grid"), "{msg}");
    keys
}

/// A dotted configuration key (`selection.keep_ratio`, `superbatch.shard.rank`, with an
/// optional `: value`) and whether the config types have it: a YAML that sets exactly that
/// key is parsed, and serde's "unknown field" / "unknown variant" are the only answers that
/// mean no (a type or value problem means the key exists).
fn check_key(
    span: &str,
    at: &str,
    tops: &(BTreeSet<String>, BTreeSet<String>),
    problems: &mut Vec<String>,
) {
    let (key, value) = match span.split_once(':') {
        Some((k, v)) => (k, Some(v.trim())),
        None => (span, None),
    };
    let segs: Vec<&str> = key.split('.').collect();
    let seg_ok = |s: &str| {
        let name = s.split('[').next().unwrap_or("");
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.starts_with(|c: char| c.is_ascii_lowercase())
    };
    if segs.len() < 2
        || !segs.iter().all(|s| seg_ok(s))
        || EXTENSIONS.contains(segs.last().unwrap())
    {
        return;
    }
    let eval = tops.1.contains(segs[0]) && !tops.0.contains(segs[0]);
    if !tops.0.contains(segs[0]) && !eval {
        return;
    }
    // Only a plain word is taken as the value (`extractor.kind: torchscript`), not a
    // template (`{ rank, world_size }`, `drop | pad`).
    let value = value.filter(|v| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    let mut yaml = String::new();
    for (depth, s) in segs.iter().enumerate() {
        let name = s.split('[').next().unwrap();
        yaml.push_str(&"  ".repeat(depth));
        yaml.push_str(name);
        yaml.push(':');
        yaml.push_str(if depth + 1 == segs.len() { " " } else { "\n" });
    }
    // Without a value, `null`: then only "unknown field" says no (`null` is no variant).
    yaml.push_str(value.unwrap_or("null"));
    yaml.push('\n');
    if let Some(msg) = parse_message(&yaml, eval) {
        if msg.contains("unknown field") || (value.is_some() && msg.contains("unknown variant")) {
            problems.push(format!(
                "{at}: `{span}` is not a configuration key/value: {msg}"
            ));
        }
    }
}

/// A YAML block of the docs must validate: a pipeline (a fragment gets a minimal `source`),
/// or an eval file.
fn check_yaml_block(text: &str, at: &str, problems: &mut Vec<String>) {
    let eval = saln::eval::is_eval_yaml(text);
    let has_source = text.lines().any(|l| l.starts_with("source:"));
    let yaml = if eval || has_source {
        text.to_string()
    } else {
        format!("source:\n  idx: {{ dir: /x }}\n{text}")
    };
    if let Some(msg) = parse_message(&yaml, eval) {
        problems.push(format!("{at}: the YAML block does not validate: {msg}"));
    }
}

/// Everything the pages say that the tree, the CLI, the Makefile or the config types can
/// contradict. Returns the problems (empty: the docs are true of this tree).
fn check_pages(pages: &[Page]) -> Vec<String> {
    let targets = make_targets();
    let tops = (top_level_keys(false), top_level_keys(true));
    let mut problems = Vec::new();
    for page in pages {
        for piece in pieces(page) {
            match piece {
                Piece::Code { text, line, bases } => {
                    let at = format!("{}:{line}", page.path.display());
                    if path_like(&text, !bases.is_empty()) {
                        check_path(page, line, &text, &bases, &mut problems);
                    }
                    check_command_line(&text, &at, &targets, &mut problems);
                    check_key(&text, &at, &tops, &mut problems);
                }
                Piece::Link { target, line } => {
                    if !target.contains("://") && !target.starts_with('#') {
                        let t = target.split('#').next().unwrap_or("");
                        check_path(page, line, t, &[], &mut problems);
                    }
                }
                Piece::Block { info, text, line } => {
                    let at = format!("{}:{line}", page.path.display());
                    match info.as_str() {
                        "yaml" => check_yaml_block(&text, &at, &mut problems),
                        "sh" | "bash" | "console" | "shell" => {
                            // A continued line (`\` at its end) is one command, reported
                            // at its first line.
                            let mut commands: Vec<(usize, String)> = Vec::new();
                            let mut open = false;
                            for (k, l) in text.lines().enumerate() {
                                let (body, more) = match l.trim_end().strip_suffix('\\') {
                                    Some(b) => (b, true),
                                    None => (l, false),
                                };
                                match commands.last_mut() {
                                    Some((_, c)) if open => {
                                        c.push(' ');
                                        c.push_str(body);
                                    }
                                    _ => commands.push((k, body.to_string())),
                                }
                                open = more;
                            }
                            for (k, l) in &commands {
                                let at = format!("{}:{}", page.path.display(), line + 1 + k);
                                let l = l.trim_start_matches("$ ");
                                check_command_line(l, &at, &targets, &mut problems);
                                // Words inside quotes are arguments (a sed script), not paths.
                                let mut quoted = false;
                                for w in l.split_whitespace().take_while(|w| !w.starts_with('#')) {
                                    let quotes = w.matches(['\'', '"']).count();
                                    let skip = quoted || quotes > 0;
                                    quoted ^= quotes % 2 == 1;
                                    let w = w.trim_start_matches('(').trim_end_matches([')', ';']);
                                    if !skip && path_like(w, false) && !w.contains('=') {
                                        check_path(page, line + 1 + k, w, &[], &mut problems);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    // A stale exemption is a problem too.
    for (p, s, _) in NOT_IN_THE_REPOSITORY {
        let used = pages
            .iter()
            .any(|page| page.path == Path::new(p) && page.text.contains(&format!("`{s}`")));
        if !used {
            problems.push(format!("{p}: the exemption for `{s}` is no longer used"));
        }
    }
    problems
}

/// README.md and docs/ name only what exists: paths, `saln-pipe` commands and flags, make
/// targets, configuration keys; their YAML blocks validate.
#[test]
fn every_reference_in_the_docs_is_true_of_the_tree() {
    let problems = check_pages(&pages());
    assert!(
        problems.is_empty(),
        "{} wrong references in README.md / docs/:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker catches what it is there to catch: a renamed file, a flag or command that
/// does not exist, a missing make target, an unknown key or value, a YAML block with a typo.
#[test]
fn the_docs_check_fails_on_planted_broken_references() {
    let page = Page {
        path: "README.md".into(),
        text: "See `docs/no-such-page.md` and [this](scripts/gone.sh).\n\
               Run `saln-pipe run FILE --sede 3`, `saln-pipe evaluate FILE`, `make no-such-target`.\n\
               Set `selection.keep_ratoi` or `extractor.kind: torchscrip`.\n\
               ```yaml\nselection: { polcy: saln }\n```\n\
               ```sh\nsaln-pipe curate pipelines/nope.yaml --overwite\n\
               saln-pipe bench selection --sizes 256 \\\n    --no-such-flag 2\n```\n"
            .into(),
    };
    let problems = check_pages(&[page]);
    let all = problems.join("\n");
    for want in [
        "`docs/no-such-page.md` is not in the repository",
        "`scripts/gone.sh` is not in the repository",
        "`saln-pipe run` has no flag `--sede`",
        "`evaluate` is not a command",
        "no target `no-such-target`",
        "`selection.keep_ratoi` is not a configuration key",
        "`extractor.kind: torchscrip` is not a configuration key/value",
        "the YAML block does not validate",
        "`pipelines/nope.yaml` is not in the repository",
        "`saln-pipe curate` has no flag `--overwite`",
        "`saln-pipe bench selection` has no flag `--no-such-flag`",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // The real exemptions were not written on this page: each is reported as stale.
    assert!(all.contains("is no longer used"), "{all}");
}

/// The figure blocks of README.md and docs/ (`<!-- figures:NAME -->`) are what
/// `scripts/figures.py` writes from the committed results: a figure typed by hand, or
/// results committed without rerunning the script, fail here with the diff.
#[test]
fn figure_blocks_are_what_the_script_writes_from_the_committed_results() {
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/figures.py"))
        .arg("--check")
        .output()
        .expect("python3 runs scripts/figures.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
