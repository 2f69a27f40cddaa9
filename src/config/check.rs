//! Every problem of a pipeline file in one pass, for `saln-pipe validate` and
//! `saln.validate`.
//!
//! A typed parse stops at the first unknown key or enum value, so a file with five mistakes
//! would take five fix-and-rerun rounds. Here the file is parsed as a whole first; when that
//! fails, each top-level section (`selection:`, `superbatch:`, ...) is parsed on its own, with
//! the lines before it kept blank so the parser's line and column stay those of the file,
//! and a section that fails does not stop the others. Then the value checks run on every
//! section that parsed, then the resource checks (the device, every file the run will open,
//! the environment variables it reads, the image-size rule), each only where the sections it
//! depends on parsed. The problems come out ordered by line.
//!
//! Within one section the parser still stops at the first mistake: two unknown keys in the
//! same section take two rounds.
use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::messages::{column_in_message, key_in_message, line_in_message, short_message};
use super::{locate_key, PipelineConfig};
use crate::error::ConfigIssue;

/// Every section of a pipeline, each optional, so that one can be parsed without the others.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Sections {
    seed: Option<u64>,
    device: Option<String>,
    torch_threads: Option<usize>,
    source: Option<super::SourceConfig>,
    augment: Option<super::AugmentConfig>,
    superbatch: Option<super::SuperBatchConfig>,
    extractor: Option<super::ExtractorConfig>,
    selection: Option<super::SelectionConfig>,
    trainer: Option<super::TrainerConfig>,
    channels: Option<super::ChannelConfig>,
    report: Option<super::ReportConfig>,
    export: Option<super::ExportConfig>,
    loader_only: Option<super::LoaderOnlyConfig>,
}

/// Calls the macro `$m` with the sections `PipelineConfig` holds as plain fields (filled
/// with defaults when absent); `export` and `loader_only` are `Option`s there too.
macro_rules! defaulted_sections {
    ($m:ident) => {
        $m!(
            seed,
            device,
            torch_threads,
            source,
            augment,
            superbatch,
            extractor,
            selection,
            trainer,
            channels,
            report
        )
    };
}

impl Sections {
    /// Moves the sections `other` has into `self`.
    fn absorb(&mut self, other: Sections) {
        macro_rules! take {
            ($($f:ident),*) => {$( if other.$f.is_some() { self.$f = other.$f; } )*};
        }
        defaulted_sections!(take);
        take!(export, loader_only);
    }
}

/// The outcome of checking a pipeline text: the configuration when it parsed whole, and
/// every problem found (empty when the pipeline can run).
#[derive(Debug)]
pub struct Checked {
    /// The configuration, when the whole file parsed (it may still have value problems).
    pub config: Option<PipelineConfig>,
    /// Every problem, ordered by line (problems without a line last).
    pub issues: Vec<ConfigIssue>,
}

/// Checks pipeline YAML `text` and, when `resources` is set, what a run of it needs: the
/// device, the data set and model files, `$RANK` / `$WORLD_SIZE`, the image-size rule.
///
/// ```
/// let yaml = "source: { idx: { dir: /nowhere } }\n\
///             selection: { rule: sideways, keep_ratio: 0.5 }\n\
///             trainer: { epochs: 0 }\n\
///             fooo: 1\n";
/// let c = saln::config::check::check_text(yaml, false);
/// let keys: Vec<_> = c.issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
/// assert_eq!(
///     keys,
///     [("selection.rule", Some(2)), ("trainer.epochs", Some(3)), ("fooo", Some(4))]
/// );
/// ```
pub fn check_text(text: &str, resources: bool) -> Checked {
    let (config, sections, failed, mut issues) = parse(text);
    if let Some(c) = &config {
        issues.extend(located(text, c.validate()));
    } else if let Some(partial) = partial_config(&sections) {
        // Value checks on what parsed; problems under a section that did not are its parse
        // error's business.
        issues.extend(
            located(text, partial.validate())
                .into_iter()
                .filter(|i| !failed.contains(top(&i.key)) && sections_have(&sections, &i.key)),
        );
        if resources {
            issues.extend(located(text, resource_checks(&partial, &sections, &failed)));
        }
        order(&mut issues);
        return Checked {
            config: None,
            issues,
        };
    }
    if let (true, Some(c)) = (resources, &config) {
        issues.extend(located(text, c.resource_issues(super::ResourceChecks::ALL)));
    }
    order(&mut issues);
    Checked { config, issues }
}

/// Reads and checks a pipeline file (see [`check_text`]); a file that cannot be read is one
/// problem at key `file`.
pub fn check_file(path: &Path, resources: bool) -> Checked {
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, resources),
        Err(e) => Checked {
            config: None,
            issues: vec![ConfigIssue {
                key: "file".into(),
                message: format!("{}: {e}", path.display()),
                line: None,
                column: None,
            }],
        },
    }
}

type Parsed = (
    Option<PipelineConfig>,
    Sections,
    BTreeSet<String>,
    Vec<ConfigIssue>,
);

/// The whole configuration when the text parses; else every section that does on its own,
/// the names of those that do not, and their parse errors.
fn parse(text: &str) -> Parsed {
    let whole = serde_saphyr::from_str::<PipelineConfig>(text);
    let message = match whole {
        Ok(c) => return (Some(c), Sections::default(), BTreeSet::new(), Vec::new()),
        Err(e) => e.to_string(),
    };
    let first = || vec![parse_issue(&message, text, None)];
    // A syntax error, or a file that is not one block mapping of sections: one problem, as
    // the parser words it.
    let Some(blocks) = top_level_blocks(text) else {
        return (None, Sections::default(), BTreeSet::new(), first());
    };
    let mut sections = Sections::default();
    let mut failed = BTreeSet::new();
    let mut issues = Vec::new();
    for (name, start, end) in &blocks {
        let padded: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| if (*start..*end).contains(&i) { l } else { "" })
            .collect::<Vec<_>>()
            .join("\n");
        match serde_saphyr::from_str::<Sections>(&padded) {
            Ok(s) => sections.absorb(s),
            Err(e) => {
                failed.insert(name.clone());
                issues.push(parse_issue(&e.to_string(), text, Some(name)));
            }
        }
    }
    if failed.is_empty() {
        // Every section parsed on its own but the file did not (a missing `source:`, an
        // alias across sections): the whole file's message is the one to give.
        issues = first();
    } else if sections.source.is_none() && !failed.contains("source") {
        issues.push(ConfigIssue {
            key: "source".into(),
            message: "missing field `source`".into(),
            line: None,
            column: None,
        });
    }
    (None, sections, failed, issues)
}

/// A parser message as a problem: the key it is about (under `section` when the parser
/// names none), its line and column.
fn parse_issue(message: &str, text: &str, section: Option<&String>) -> ConfigIssue {
    let line = line_in_message(message);
    let key = key_in_message(message, text, line)
        .filter(|k| !k.is_empty())
        .or_else(|| section.cloned())
        .unwrap_or_else(|| "yaml".into());
    ConfigIssue {
        key,
        message: short_message(message),
        line,
        column: line.and(column_in_message(message)),
    }
}

/// `(name, first line, end line)` (0-based, end exclusive) of each top-level key of a
/// block-mapping document; `None` for anything else (flow style at the top, a list, several
/// documents).
fn top_level_blocks(text: &str) -> Option<Vec<(String, usize, usize)>> {
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let first = line.chars().next();
        match first {
            None | Some(' ' | '\t' | '#') => continue,
            _ if line.starts_with("---") && blocks.is_empty() => continue,
            _ => {}
        }
        let (key, _) = line.split_once(':')?;
        let key = key.trim().trim_matches(['"', '\'']);
        if key.is_empty() || key.starts_with(['-', '{', '[', '?', '&', '*', '<', '.']) {
            return None;
        }
        if let Some(last) = blocks.last_mut() {
            last.2 = i;
        }
        blocks.push((key.to_string(), i, text.lines().count()));
    }
    (!blocks.is_empty()).then_some(blocks)
}

/// The configuration with a default for every section that is missing or did not parse
/// (`None` when there is nothing to check).
fn partial_config(s: &Sections) -> Option<PipelineConfig> {
    let mut c: PipelineConfig = serde_saphyr::from_str("source: {}").ok()?;
    macro_rules! fill {
        ($($f:ident),*) => {$( if let Some(v) = &s.$f { c.$f = v.clone(); } )*};
    }
    defaulted_sections!(fill);
    c.export = s.export.clone();
    c.loader_only = s.loader_only.clone();
    Some(c)
}

/// Whether the section of `key` was written and parsed, or is one whose default is checked
/// on its own (`source` is required, so its absence is already a problem).
fn sections_have(s: &Sections, key: &str) -> bool {
    match top(key) {
        "source" => s.source.is_some(),
        _ => true,
    }
}

fn top(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

/// The resource checks of a partly parsed file: those whose sections parsed.
fn resource_checks(
    c: &PipelineConfig,
    s: &Sections,
    failed: &BTreeSet<String>,
) -> Vec<ConfigIssue> {
    let ok = |name: &str| !failed.contains(name);
    c.resource_issues(super::ResourceChecks {
        device: ok("device"),
        model: ok("device") && ok("selection") && ok("extractor"),
        data: s.source.is_some(),
        shard: ok("superbatch"),
        shapes: s.source.is_some() && ok("augment"),
    })
}

/// Places each problem on its line (parse errors already have one).
fn located(text: &str, mut issues: Vec<ConfigIssue>) -> Vec<ConfigIssue> {
    for i in &mut issues {
        if i.line.is_none() {
            i.line = locate_key(text, &i.key);
        }
    }
    issues
}

/// By line, problems without a line last; otherwise in the order found.
fn order(issues: &mut [ConfigIssue]) {
    issues.sort_by_key(|i| (i.line.is_none(), i.line, i.column));
}
