//! The `selection` source: a curated set read back from a Parquet export, so that a
//! selection made once (`saln-pipe curate`, or a run with `export:`) can be trained on
//! later, by saln or by anything that reads a saln [`Source`].
//!
//! An export holds ids and origins, not pixels: the source wraps the data set the export
//! was made from (the format block beside `selection:` in `source:`) and serves the rows'
//! samples from it, in ascending source-index order. Each sample's id and label are checked
//! against the export, so pointing the source at another data set is an error naming the
//! row, not a silent mix-up.
//!
//! ```yaml
//! source:
//!   idx: { dir: /usr/share/datasets/fashion-mnist }   # the data set the export was made from
//!   selection:
//!     export: target/saln/curated      # the export folder (or one of its files)
//!     epoch: all                       # or an epoch number (0-based, as in the files)
//!   holdout: 0                         # the curated set is the learner's whole share
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Sample, Source};
use crate::error::Issues;
use crate::error::{Error, Result};

/// Which epochs' selections to take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EpochPick {
    /// Every epoch: each sample kept in any epoch, once.
    #[default]
    All,
    /// One epoch (0-based, the `epoch` column).
    Epoch(u32),
}

impl Serialize for EpochPick {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            EpochPick::All => s.serialize_str("all"),
            EpochPick::Epoch(e) => s.serialize_u32(*e),
        }
    }
}

impl<'de> Deserialize<'de> for EpochPick {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EpochPick;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all` or an epoch number (0-based)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<EpochPick, E> {
                u32::try_from(v)
                    .map(EpochPick::Epoch)
                    .map_err(|_| E::custom(format!("epoch {v} is out of range")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<EpochPick, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("epoch {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<EpochPick, E> {
                match v {
                    "all" => Ok(EpochPick::All),
                    _ => v
                        .parse::<u64>()
                        .map_err(|_| E::custom(format!("`{v}`: expected `all` or an epoch number")))
                        .and_then(|n| self.visit_u64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Train on the samples an earlier export selected (`source.selection`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSourceConfig {
    /// The export: its folder (every `*.parquet` in it) or one of its files.
    pub export: PathBuf,
    /// `all` (default: every sample kept in any epoch, once) or one epoch number (0-based).
    #[serde(default)]
    pub epoch: EpochPick,
    /// Also take the rows of rejected samples (an export written with
    /// `include_rejected`); by default only kept samples are served.
    #[serde(default)]
    pub include_rejected: bool,
}

impl SelectionSourceConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            !self.export.as_os_str().is_empty(),
            "source.selection.export",
            || "must name an export folder or file".into(),
        );
    }
}

/// The samples an export selected, served from the data set they came from.
pub struct SelectionSource {
    inner: Arc<dyn Source>,
    /// `(source index in inner, sample id, label)`, ascending by source index.
    rows: Vec<(usize, u64, i64)>,
    export: PathBuf,
}

impl std::fmt::Debug for SelectionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectionSource")
            .field("export", &self.export)
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl SelectionSource {
    /// Reads the export `cfg` names and serves its selected samples from `inner` (the
    /// training source the export was made from). Errors name the export: no files, no
    /// rows for the asked epoch, an index past the end of `inner`, or one sample id given
    /// two different source indices.
    pub fn open(cfg: &SelectionSourceConfig, inner: Arc<dyn Source>) -> Result<SelectionSource> {
        let path = &cfg.export;
        let bad = |message: String| Error::Data {
            path: path.clone(),
            message,
        };
        if super::exported::files(path)?.is_empty() {
            return Err(bad("no Parquet files: not an export folder".into()));
        }
        let all = super::exported::read(path, false)?;
        let mut epochs: Vec<u32> = all.iter().map(|r| r.epoch).collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut by_index: BTreeMap<usize, (u64, i64)> = BTreeMap::new();
        let mut index_of: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &all {
            let wanted = match cfg.epoch {
                EpochPick::All => true,
                EpochPick::Epoch(e) => r.epoch == e,
            };
            if !wanted || !(r.kept || cfg.include_rejected) {
                continue;
            }
            let index = usize::try_from(r.source_index)
                .ok()
                .filter(|&i| i < inner.len())
                .ok_or_else(|| {
                    bad(format!(
                        "sample id {} has source_index {} but the data set holds {} samples: \
                         is `source` the data set the export was made from?",
                        r.sample_id,
                        r.source_index,
                        inner.len()
                    ))
                })?;
            if let Some(&other) = index_of.get(&r.sample_id) {
                if other != index {
                    return Err(bad(format!(
                        "sample id {} appears at source indices {other} and {index}: \
                         the folder mixes exports of different data sets",
                        r.sample_id
                    )));
                }
            }
            index_of.insert(r.sample_id, index);
            by_index.insert(index, (r.sample_id, r.label));
        }
        if by_index.is_empty() {
            return Err(bad(format!(
                "no {}rows for {} (the export holds epochs {epochs:?})",
                if cfg.include_rejected { "" } else { "kept " },
                match cfg.epoch {
                    EpochPick::All => "any epoch".to_string(),
                    EpochPick::Epoch(e) => format!("epoch {e}"),
                }
            )));
        }
        Ok(SelectionSource {
            inner,
            rows: by_index
                .into_iter()
                .map(|(i, (id, label))| (i, id, label))
                .collect(),
            export: path.clone(),
        })
    }

    /// The export this source reads.
    pub fn export(&self) -> &Path {
        &self.export
    }

    /// Ids of the selected samples, in the order the source serves them.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|r| r.1)
    }
}

impl Source for SelectionSource {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.checked(index, |i| self.inner.get(i))
    }

    fn get_resized(&self, index: usize, size: crate::pixel::Size) -> Result<Sample> {
        self.checked(index, |i| self.inner.get_resized(i, size))
    }

    fn locate(&self, index: usize) -> String {
        match self.rows.get(index) {
            Some(&(i, _, _)) => self.inner.locate(i),
            None => format!("{}#{index}", self.export.display()),
        }
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn shape(&self) -> super::SourceShape {
        self.inner.shape()
    }
}

impl SelectionSource {
    /// Row `index` fetched from the inner source by `fetch`, checked against the export's id
    /// and label for that row.
    fn checked(&self, index: usize, fetch: impl FnOnce(usize) -> Result<Sample>) -> Result<Sample> {
        let &(inner_index, id, label) = self.rows.get(index).ok_or_else(|| Error::Sample {
            sample: format!("{}#{index}", self.export.display()),
            message: format!("index out of range (0..{})", self.rows.len()),
        })?;
        let s = fetch(inner_index)?;
        if (s.id, s.label) != (id, label) {
            return Err(Error::Sample {
                sample: self.inner.locate(inner_index),
                message: format!(
                    "is id {} label {} in the data set but id {id} label {label} in the export {}: \
                     the export was made from another data set",
                    s.id,
                    s.label,
                    self.export.display()
                ),
            });
        }
        Ok(s)
    }
}

/// Wraps the training split of `data` in a [`SelectionSource`] when `cfg` asks for one.
pub fn apply(cfg: Option<&SelectionSourceConfig>, data: super::DataSet) -> Result<super::DataSet> {
    match cfg {
        None => Ok(data),
        Some(c) => Ok(super::DataSet {
            train: Arc::new(SelectionSource::open(c, data.train)?),
            test: data.test,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_parses_as_all_or_a_number() {
        let p = |s: &str| serde_saphyr::from_str::<SelectionSourceConfig>(s);
        assert_eq!(p("export: x\n").unwrap().epoch, EpochPick::All);
        assert_eq!(p("export: x\nepoch: all\n").unwrap().epoch, EpochPick::All);
        assert_eq!(
            p("export: x\nepoch: 3\n").unwrap().epoch,
            EpochPick::Epoch(3)
        );
        let e = p("export: x\nepoch: last\n").unwrap_err().to_string();
        assert!(e.contains("epoch number"), "{e}");
    }
}
