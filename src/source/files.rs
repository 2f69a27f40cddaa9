//! A source of image files on disk: a list of `(path, label)` entries, read and decoded on
//! demand by the loader's workers. Behind the `image_folder` and `list` sources.
//!
//! Nothing but the list is held in memory (about 100 bytes per image), so memory does not
//! grow with the data set beyond that; the file system's cache does the rest. A file that
//! cannot be read or decoded is an [`Error::Sample`] naming its path; whether the run skips
//! it or stops is `on_error`'s decision, made by the loader.
use std::path::PathBuf;

use super::{decode, Sample, Source, SourceShape};
use crate::error::{Error, Result};
use crate::pixel::Size;

/// Image files with labels.
#[derive(Debug, Clone)]
pub struct FileSource {
    entries: Vec<(PathBuf, i64)>,
    classes: usize,
    channels: usize,
    max_pixels: u64,
}

impl FileSource {
    /// Refuses images whose header claims more than `max_pixels` pixels
    /// (`source.limits.max_pixels`; the default applies otherwise).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// A source over `entries` (path, label in `0..classes`), decoded to `channels` (1 or 3).
    pub fn new(entries: Vec<(PathBuf, i64)>, classes: usize, channels: usize) -> Self {
        FileSource {
            entries,
            classes,
            channels,
            max_pixels: super::Limits::default().max_pixels,
        }
    }

    /// The entries, in sample-id order.
    pub fn entries(&self) -> &[(PathBuf, i64)] {
        &self.entries
    }

    /// The entries at `positions` (in that order), as a new source with the same classes.
    pub fn subset(&self, positions: &[usize]) -> FileSource {
        FileSource {
            entries: positions.iter().map(|&i| self.entries[i].clone()).collect(),
            classes: self.classes,
            channels: self.channels,
            max_pixels: self.max_pixels,
        }
    }
}

impl Source for FileSource {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.read(index, None)
    }

    fn get_resized(&self, index: usize, size: Size) -> Result<Sample> {
        self.read(index, Some(size))
    }

    fn locate(&self, index: usize) -> String {
        match self.entries.get(index) {
            Some((p, _)) => p.display().to_string(),
            None => format!("#{index}"),
        }
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn shape(&self) -> SourceShape {
        SourceShape::variable(self.channels)
    }
}

impl FileSource {
    fn read(&self, index: usize, size: Option<Size>) -> Result<Sample> {
        let (path, label) = self.entries.get(index).ok_or_else(|| Error::Sample {
            sample: format!("#{index}"),
            message: format!("index out of range (0..{})", self.entries.len()),
        })?;
        let sample_err = |message: String| Error::Sample {
            sample: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| sample_err(format!("cannot read: {e}")))?;
        let image = decode::decode_limited(&bytes, self.channels, size, self.max_pixels)
            .map_err(sample_err)?;
        Ok(Sample {
            id: index as u64,
            label: *label,
            image,
        })
    }
}
