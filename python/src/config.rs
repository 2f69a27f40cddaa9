//! A pipeline configuration from Python: a YAML file, YAML text, and/or overrides.
//!
//! Without overrides the text goes through [`PipelineConfig::from_yaml_str`], exactly as
//! `saln-pipe` reads a file (same messages, same lines). With overrides the YAML is read as a
//! tree, each override is set at its dotted key (a mapping value is merged into the mapping
//! already there, any other value replaces it), and the tree is deserialised and validated
//! the same way; problems at keys written in the file keep their line, problems at an
//! overridden key name the override.
use std::path::PathBuf;

use saln::config::PipelineConfig;
use saln::error::{ConfigIssue, Error};
use serde_json::{Map, Value};

/// Where a configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// A YAML file.
    pub path: Option<PathBuf>,
    /// YAML text (used when `path` is `None`).
    pub yaml: Option<String>,
    /// `(dotted key, value)` pairs, applied in order.
    pub overrides: Vec<(String, Value)>,
}

impl ConfigSource {
    /// From the extension's arguments: `overrides` is a JSON list of `[key, value]` pairs.
    pub fn new(
        path: Option<String>,
        yaml: Option<String>,
        overrides: Option<&str>,
    ) -> saln::Result<Self> {
        let overrides = match overrides {
            None => Vec::new(),
            Some(json) => {
                let pairs: Vec<(String, Value)> =
                    serde_json::from_str(json).map_err(|e| Error::ConfigParse {
                        path: "<overrides>".into(),
                        message: format!("overrides are not a list of (key, value) pairs: {e}"),
                    })?;
                pairs
            }
        };
        Ok(ConfigSource {
            path: path.map(PathBuf::from),
            yaml,
            overrides,
        })
    }

    /// The YAML text and the name messages give it (the file, or `<yaml>` / `<overrides>`).
    pub fn text(&self) -> saln::Result<(String, PathBuf)> {
        match (&self.path, &self.yaml) {
            (Some(p), _) => std::fs::read_to_string(p)
                .map(|t| (t, p.clone()))
                .map_err(|e| Error::io(p, e)),
            (None, Some(t)) => Ok((t.clone(), PathBuf::from("<yaml>"))),
            (None, None) => Ok((String::new(), PathBuf::from("<overrides>"))),
        }
    }

    /// Whether `key` (a dotted issue key) is set by an override, and by which.
    fn overridden(&self, key: &str) -> Option<&str> {
        self.overrides.iter().rev().find_map(|(k, _)| {
            let hit =
                key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["));
            hit.then_some(k.as_str())
        })
    }

    /// The configuration, parsed and validated.
    pub fn resolve(&self) -> saln::Result<PipelineConfig> {
        self.resolve_with(false)
    }

    /// [`ConfigSource::resolve`] for a caller that brings the data itself: the `source`
    /// section may lack a format block, or be missing.
    pub fn resolve_without_data(&self) -> saln::Result<PipelineConfig> {
        self.resolve_with(true)
    }

    fn resolve_with(&self, data_given: bool) -> saln::Result<PipelineConfig> {
        let (text, origin) = self.text()?;
        if self.overrides.is_empty() && !data_given {
            return PipelineConfig::from_yaml_str(&text, &origin);
        }
        let mut tree: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(&text).map_err(|e| Error::ConfigParse {
                path: origin.clone(),
                message: e.to_string(),
            })?
        };
        if tree.is_null() {
            tree = Value::Object(Map::new());
        }
        if !tree.is_object() {
            return Err(Error::ConfigParse {
                path: origin,
                message: "the top level of a pipeline must be a mapping".into(),
            });
        }
        if data_given {
            set_dotted(&mut tree, "source", Value::Object(Map::new()))
                .map_err(|m| Error::config("source", m))?;
        }
        for (key, value) in &self.overrides {
            set_dotted(&mut tree, key, value.clone()).map_err(|m| Error::ConfigInvalid {
                path: origin.clone(),
                issues: vec![issue(key, None, format!("override: {m}"))],
            })?;
        }
        let cfg: PipelineConfig = match serde_json::from_value(tree) {
            Ok(c) => c,
            Err(e) => {
                // An unknown key or a wrong type in the file itself: its own parse error
                // has the line. A key the file lacks may be what an override adds.
                if let Err(pe @ Error::ConfigParse { .. }) =
                    PipelineConfig::from_yaml_str(&text, &origin)
                {
                    if !pe.to_string().contains("missing field") {
                        return Err(pe);
                    }
                }
                let keys: Vec<&str> = self.overrides.iter().map(|(k, _)| k.as_str()).collect();
                let message = match keys.is_empty() {
                    true => e.to_string(),
                    false => format!("{e} (with the overrides {})", keys.join(", ")),
                };
                return Err(Error::ConfigParse {
                    path: origin,
                    message,
                });
            }
        };
        let mut issues = cfg.validate();
        if data_given {
            // The data set's own block does not matter; `channels`, `on_error` do.
            let formats = [
                "idx",
                "cifar10",
                "image_folder",
                "list",
                "parquet",
                "selection",
            ];
            issues.retain(|i| {
                let sub = i.key.strip_prefix("source.").unwrap_or("");
                i.key != "source"
                    && !formats
                        .iter()
                        .any(|f| sub == *f || sub.starts_with(&format!("{f}.")))
            });
        }
        for i in &mut issues {
            match self.overridden(&i.key) {
                Some(k) => {
                    i.line = None;
                    i.message = format!("{} (set by the override `{k}`)", i.message);
                }
                None => i.line = saln::config::locate_key(&text, &i.key),
            }
        }
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::ConfigInvalid {
                path: origin,
                issues,
            })
        }
    }
}

fn issue(key: &str, line: Option<usize>, message: String) -> ConfigIssue {
    ConfigIssue {
        key: key.into(),
        line,
        message,
    }
}

/// Sets `value` at the dotted `key` of `tree`, creating mappings on the way; a mapping
/// value is merged into a mapping already there.
fn set_dotted(tree: &mut Value, key: &str, value: Value) -> Result<(), String> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!(
            "`{key}` is not a dotted key such as `selection.keep_ratio`"
        ));
    }
    if key.contains('[') {
        return Err(format!(
            "`{key}`: list items cannot be set one by one; set the whole list"
        ));
    }
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if node.is_null() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            return Err(format!(
                "`{}` is not a mapping, so `{key}` cannot be set",
                parts[..i].join(".")
            ));
        };
        if i + 1 == parts.len() {
            match map.get_mut(*part) {
                Some(old) => merge(old, value),
                None => {
                    map.insert(part.to_string(), value);
                }
            }
            return Ok(());
        }
        node = map.entry(part.to_string()).or_insert(Value::Null);
    }
    Ok(())
}

/// `old` becomes `new`, except that mappings are merged key by key.
fn merge(old: &mut Value, new: Value) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The line a parser message points at (`... line 5 ...`).
pub fn line_in_message(message: &str) -> Option<usize> {
    let at = message.find("line ")?;
    let digits: String = message[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The column a parser message points at (`... column 9 ...`).
fn column_in_message(message: &str) -> Option<usize> {
    let at = message.find("column ")?;
    let digits: String = message[at + 7..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The parser's own words, without the `error: line L column C: ` prefix and the snippet
/// of the file that follows the first line.
pub fn short_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let rest = first.strip_prefix("error: ").unwrap_or(first);
    match rest.split_once(": ") {
        Some((at, m)) if at.starts_with("line ") => m.to_string(),
        _ => rest.to_string(),
    }
}

/// The key written before `column` (1-based) on `line_text`: `size` in `  size: lots`.
fn key_before(line_text: &str, column: usize) -> Option<String> {
    let end = column.saturating_sub(1).min(line_text.len());
    let prefix = line_text.get(..end)?;
    let colon = prefix.rfind(':')?;
    let key: String = prefix[..colon]
        .chars()
        .rev()
        .take_while(|c| !matches!(c, ' ' | '\t' | '{' | ',' | '-'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// The key a parser message is about, placed under the mappings that enclose it at `line`
/// of `text`: the unknown field it names (`selection.keep_ratoi`), the missing field under
/// the mapping it points at (`export.dir`), or else the key written before the column it
/// points at (`superbatch.size` for `size: lots`, `selection.policy` for an unknown variant).
pub fn key_in_message(message: &str, text: &str, line: Option<usize>) -> Option<String> {
    let field = |prefix: &str| {
        let at = message.find(prefix)? + prefix.len();
        let end = message[at..].find('`')?;
        Some(message[at..at + end].to_string())
    };
    let join = |a: String, b: String| if a.is_empty() { b } else { format!("{a}.{b}") };
    let pointed = || -> Option<String> {
        let line = line?;
        let line_text = text.lines().nth(line.checked_sub(1)?)?;
        let name = key_before(line_text, column_in_message(message)?)?;
        Some(join(
            parents_at(text, line, &name).unwrap_or_default(),
            name,
        ))
    };
    if let Some(name) = field("unknown field `") {
        let parents = line.and_then(|l| parents_at(text, l, &name));
        return Some(join(parents.unwrap_or_default(), name));
    }
    if let Some(name) = field("missing field `") {
        return Some(match pointed() {
            Some(mapping) => join(mapping, name),
            None => name,
        });
    }
    pointed()
}

/// The dotted path of the mappings that enclose the key `name` on line `line` (1-based) of
/// a block- or flow-style YAML `text`.
fn parents_at(text: &str, line: usize, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let target = *lines.get(line.checked_sub(1)?)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| -> Option<String> {
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        let k = k.trim();
        (!k.is_empty() && !k.starts_with('#') && !k.contains(' ')).then(|| k.to_string())
    };
    // Block mappings: walk up to the lines with less indentation.
    let mut path = Vec::new();
    let mut level = indent(target);
    for l in lines[..line - 1].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        if indent(l) < level {
            if let Some(k) = key_of(l) {
                path.push(k);
            }
            level = indent(l);
            if level == 0 {
                break;
            }
        }
    }
    path.reverse();
    // Flow mappings on the line itself: `selection: { rule: x, keep_ratoi: 1 }`.
    let upto = target
        .find(&format!("{name}:"))
        .or_else(|| target.find(name));
    if let Some(end) = upto {
        let mut stack: Vec<String> = Vec::new();
        let mut token = String::new();
        let mut last_key = String::new();
        for ch in target[..end].chars() {
            match ch {
                ':' => {
                    last_key = token.trim().trim_start_matches("- ").to_string();
                    token.clear();
                }
                '{' => {
                    stack.push(last_key.clone());
                    token.clear();
                }
                '}' => {
                    stack.pop();
                    token.clear();
                }
                ',' => token.clear(),
                c => token.push(c),
            }
        }
        path.extend(stack.into_iter().filter(|k| !k.is_empty()));
    }
    Some(path.join("."))
}
