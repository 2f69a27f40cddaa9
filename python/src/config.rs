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
        column: None,
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

// The parser-message helpers live in the library, shared with `saln-pipe validate`.
pub use saln::config::messages::{key_in_message, line_in_message, short_message};
