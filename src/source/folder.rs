//! Folders of images, one sub-folder per class: the layout of torchvision's `ImageFolder`
//! (and of ImageNet's `train/` and `val/` folders once sorted into classes).
//!
//! ```text
//! train/
//!   cat/  001.jpg  002.png  more/003.jpg
//!   dog/  001.jpg ...
//! ```
//!
//! Classes are the sub-folder names sorted by byte order (label 0 is the first), exactly as
//! `ImageFolder` numbers them. Files are found recursively under each class folder (symbolic
//! links to files are followed, to folders not), sorted by path; the sample id is the
//! position in that order. Only `.jpg`, `.jpeg` and `.png` files (any case) are images; other
//! files (`README`, `.DS_Store`, ...) are not samples and are ignored.
//!
//! The test split is either a second folder of the same layout (`test`: its classes must be
//! among the training folder's, and take their labels from it) or a share of the training
//! folder (`test_fraction`: per class, a fixed permutation that does not depend on the run
//! seed puts `round(fraction * n)` images in the test split).
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::files::FileSource;
use crate::error::Issues;
use crate::error::{Error, Result};

/// A folder with one sub-folder of images per class.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// The training folder: one sub-folder per class, holding `.jpg`/`.jpeg`/`.png` files
    /// (searched recursively).
    pub train: PathBuf,
    /// The test folder, same layout; its class names must appear in `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Instead of `test`: this share of every class of `train` becomes the test split, in
    /// [0, 1). The choice is fixed (independent of `seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
}

impl ImageFolderConfig {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        super::validate_test_choice(
            v,
            "source.image_folder",
            self.test.is_some(),
            self.test_fraction,
        );
    }
}

/// Whether `path` names an image file saln decodes (by extension, any case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// The class sub-folders of `root`, sorted by name.
fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut dirs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let path = entry.path();
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                dirs.push((name, path));
            }
        }
    }
    dirs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(dirs)
}

/// Every image file under `dir`, recursively, sorted by path.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if ft.is_dir() {
            image_files(&path, &mut found)?;
        } else if is_image_file(&path) {
            // A regular file, or a symbolic link (followed when read; a dangling one is a
            // sample error then, counted like any unreadable file).
            found.push(path);
        }
    }
    found.sort();
    out.extend(found);
    Ok(())
}

/// Class names, and `(path, label)` per image.
type Scan = (Vec<String>, Vec<(PathBuf, i64)>);

/// Scans a folder of the class layout. With `classes` given (the training folder's), the
/// folder's classes must be among them; otherwise the folder defines the classes.
fn scan(root: &Path, classes: Option<&[String]>) -> Result<Scan> {
    if !root.is_dir() {
        return Err(Error::data(
            root,
            "not a folder (expected one sub-folder of images per class)",
        ));
    }
    let dirs = class_dirs(root)?;
    if dirs.is_empty() {
        return Err(Error::data(
            root,
            "holds no class sub-folders (expected one sub-folder of images per class)",
        ));
    }
    let names: Vec<String> = match classes {
        Some(c) => c.to_vec(),
        None => dirs.iter().map(|(n, _)| n.clone()).collect(),
    };
    let mut entries = Vec::new();
    for (name, dir) in &dirs {
        let label = names.iter().position(|n| n == name).ok_or_else(|| {
            Error::data(
                dir,
                format!(
                    "class `{name}` is not a class of the training folder ({} classes)",
                    names.len()
                ),
            )
        })?;
        let mut files = Vec::new();
        image_files(dir, &mut files)?;
        if files.is_empty() && classes.is_none() {
            return Err(Error::data(
                dir,
                format!("class folder `{name}` holds no .jpg/.jpeg/.png images"),
            ));
        }
        entries.extend(files.into_iter().map(|p| (p, label as i64)));
    }
    Ok((names, entries))
}

/// Opens the training and test splits.
pub fn open_pair(cfg: &ImageFolderConfig, channels: usize) -> Result<(FileSource, FileSource)> {
    let (names, entries) = scan(&cfg.train, None)?;
    let classes = names.len();
    match (&cfg.test, cfg.test_fraction) {
        (Some(test), _) => {
            let (_, test_entries) = scan(test, Some(&names))?;
            Ok((
                FileSource::new(entries, classes, channels),
                FileSource::new(test_entries, classes, channels),
            ))
        }
        (None, fraction) => {
            let all = FileSource::new(entries, classes, channels);
            let labels: Vec<i64> = all.entries().iter().map(|e| e.1).collect();
            let (train, test) = super::fraction_split(&labels, fraction.unwrap_or(0.0));
            Ok((all.subset(&train), all.subset(&test)))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::decode::encode;
    use crate::source::{RawImage, Source};
    use image::ImageFormat;

    pub(crate) fn write_image(path: &Path, h: usize, w: usize, seed: u8) {
        let img = RawImage {
            channels: 3,
            height: h,
            width: w,
            data: (0..3 * h * w)
                .map(|i| (i as u8).wrapping_mul(seed))
                .collect(),
        };
        let fmt = if path.extension().is_some_and(|e| e == "png") {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, encode(&img, fmt).unwrap()).unwrap();
    }

    #[test]
    fn classes_are_sorted_folders_and_files_are_found_recursively() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write_image(&r.join("zebra/1.jpg"), 10, 12, 3);
        write_image(&r.join("ant/b.PNG"), 8, 8, 5);
        write_image(&r.join("ant/a.jpeg"), 9, 7, 7);
        write_image(&r.join("ant/sub/c.png"), 5, 5, 9);
        std::fs::write(r.join("ant/notes.txt"), "not an image").unwrap();
        std::fs::write(r.join("README"), "top-level file").unwrap();
        let cfg = ImageFolderConfig {
            train: r.to_path_buf(),
            test: Some(r.to_path_buf()),
            test_fraction: None,
        };
        let (train, test) = open_pair(&cfg, 3).unwrap();
        assert_eq!(train.num_classes(), 2);
        assert_eq!(train.len(), 4);
        assert_eq!(test.len(), 4);
        let locs: Vec<String> = (0..4).map(|i| train.locate(i)).collect();
        assert!(locs[0].ends_with("ant/a.jpeg"), "{locs:?}");
        assert!(locs[1].ends_with("ant/b.PNG"), "{locs:?}");
        assert!(locs[2].ends_with("ant/sub/c.png"), "{locs:?}");
        assert!(locs[3].ends_with("zebra/1.jpg"), "{locs:?}");
        let labels: Vec<i64> = (0..4).map(|i| train.get(i).unwrap().label).collect();
        assert_eq!(labels, [0, 0, 0, 1]);
        let s = train.get(3).unwrap();
        assert_eq!(
            (s.image.channels, s.image.height, s.image.width),
            (3, 10, 12)
        );
        assert_eq!(train.shape(), crate::source::SourceShape::variable(3));
        let grey = open_pair(&cfg, 1).unwrap().0.get(0).unwrap();
        assert_eq!((grey.image.channels, grey.image.height), (1, 9));
    }

    #[test]
    fn test_fraction_is_stratified_disjoint_and_seed_free() {
        let t = tempfile::tempdir().unwrap();
        for c in ["a", "b"] {
            for i in 0..10 {
                write_image(&t.path().join(format!("{c}/{i}.png")), 2, 2, i as u8);
            }
        }
        let cfg = ImageFolderConfig {
            train: t.path().to_path_buf(),
            test: None,
            test_fraction: Some(0.3),
        };
        let (train, test) = open_pair(&cfg, 3).unwrap();
        assert_eq!((train.len(), test.len()), (14, 6));
        let test_labels: Vec<i64> = test.entries().iter().map(|e| e.1).collect();
        assert_eq!(test_labels.iter().filter(|&&l| l == 0).count(), 3);
        for e in test.entries() {
            assert!(!train.entries().contains(e));
        }
        let (_, again) = open_pair(&cfg, 3).unwrap();
        assert_eq!(again.entries(), test.entries());
    }

    #[test]
    fn layout_problems_name_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let cfg = |train: PathBuf, test: Option<PathBuf>| ImageFolderConfig {
            train,
            test,
            test_fraction: None,
        };
        let e = open_pair(&cfg(t.path().join("missing"), None), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("not a folder"), "{e}");
        let e = open_pair(&cfg(t.path().to_path_buf(), None), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no class sub-folders"), "{e}");
        std::fs::create_dir(t.path().join("empty")).unwrap();
        let e = open_pair(&cfg(t.path().to_path_buf(), None), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty") && e.contains("holds no"), "{e}");
        let train = t.path().join("train");
        let test = t.path().join("test");
        write_image(&train.join("cat/1.png"), 2, 2, 1);
        write_image(&test.join("cow/1.png"), 2, 2, 1);
        let e = open_pair(&cfg(train, Some(test)), 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cow") && e.contains("not a class"), "{e}");
    }
}
