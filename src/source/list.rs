//! A list file of image paths and labels: CSV (with a header row) or JSON Lines, as data
//! sets such as Oxford-IIIT Pet ship their annotations (one line per image).
//!
//! ```text
//! path,label                          {"path": "images/Abyssinian_1.jpg", "label": 0}
//! images/Abyssinian_1.jpg,0           {"path": "images/beagle_12.jpg", "label": "beagle"}
//! images/beagle_12.jpg,beagle
//! ```
//!
//! The format follows the extension: `.csv`, `.tsv` (tab-separated), `.jsonl` / `.ndjson`.
//! CSV lines starting with `#` are comments. Relative paths are taken from `root`, by default
//! the folder holding the list file.
//!
//! Labels: when every label (of the training and the test list) is an integer, those are the
//! class indices and there are `max + 1` classes; otherwise labels are class *names*, sorted
//! by byte order, label 0 first, as for `image_folder`. A negative integer label is an error.
//!
//! A malformed list (a missing column, an empty path or label, a line that is not JSON) fails
//! when the source is opened, naming the file and the line: the list is the data set's
//! definition, not one sample. A listed image that is missing or broken is a sample error,
//! handled by `on_error` when the loader reaches it.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::files::FileSource;
use crate::error::Issues;
use crate::error::{Error, Result};

/// A CSV or JSONL list of image paths and labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The training list: `.csv` (header row), `.tsv`, or `.jsonl` / `.ndjson`.
    pub train: PathBuf,
    /// The test list, same format and columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Instead of `test`: this share of every class of `train` becomes the test split, in
    /// [0, 1); fixed, independent of `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// Column (CSV header) or key (JSONL) of the image path.
    #[serde(default = "d_path")]
    pub path_column: String,
    /// Column or key of the label: an integer class index or a class name.
    #[serde(default = "d_label")]
    pub label_column: String,
    /// Folder that relative image paths start from (default: the list file's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

fn d_path() -> String {
    "path".into()
}
fn d_label() -> String {
    "label".into()
}

impl ListConfig {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        super::validate_test_choice(v, "source.list", self.test.is_some(), self.test_fraction);
        v.check(
            !self.path_column.is_empty(),
            "source.list.path_column",
            || "must not be empty".into(),
        );
        v.check(
            !self.label_column.is_empty(),
            "source.list.label_column",
            || "must not be empty".into(),
        );
    }
}

/// One line of a list: the image path (resolved) and the label text.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    path: PathBuf,
    label: String,
    /// 1-based line number, for messages.
    line: usize,
}

fn read_list(file: &Path, cfg: &ListConfig) -> Result<Vec<Line>> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let root = match &cfg.root {
        Some(r) => r.clone(),
        None => file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let raw = match ext.as_str() {
        "csv" => read_csv(file, &text, b',', cfg)?,
        "tsv" => read_csv(file, &text, b'\t', cfg)?,
        "jsonl" | "ndjson" => read_jsonl(file, &text, cfg)?,
        other => {
            return Err(Error::data(
                file,
                format!("unknown list format `.{other}`: use .csv, .tsv or .jsonl"),
            ))
        }
    };
    if raw.is_empty() {
        return Err(Error::data(file, "the list holds no images"));
    }
    Ok(raw
        .into_iter()
        .map(|(p, label, line)| {
            let p = PathBuf::from(p);
            let path = if p.is_absolute() { p } else { root.join(p) };
            Line { path, label, line }
        })
        .collect())
}

fn read_csv(
    file: &Path,
    text: &str,
    delimiter: u8,
    cfg: &ListConfig,
) -> Result<Vec<(String, String, usize)>> {
    let mut rd = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rd
        .headers()
        .map_err(|e| Error::data(file, format!("cannot read the header row: {e}")))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::data(
                file,
                format!(
                    "no column `{name}` in the header row (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let (pc, lc) = (col(&cfg.path_column)?, col(&cfg.label_column)?);
    let mut out = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            Error::data(file, format!("line {line}: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let field = |i: usize, name: &str| match rec.get(i) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(Error::data(file, format!("line {line}: empty `{name}`"))),
        };
        out.push((
            field(pc, &cfg.path_column)?,
            field(lc, &cfg.label_column)?,
            line,
        ));
    }
    Ok(out)
}

fn read_jsonl(file: &Path, text: &str, cfg: &ListConfig) -> Result<Vec<(String, String, usize)>> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(l)
            .map_err(|e| Error::data(file, format!("line {line}: not JSON: {e}")))?;
        let get = |key: &str| -> Result<String> {
            match v.get(key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(other) => Err(Error::data(
                    file,
                    format!("line {line}: `{key}` is {other}, expected a string or a number"),
                )),
                None => Err(Error::data(file, format!("line {line}: no key `{key}`"))),
            }
        };
        out.push((get(&cfg.path_column)?, get(&cfg.label_column)?, line));
    }
    Ok(out)
}

/// Turns label texts into class indices (integers as they are, or sorted names).
fn label_lists(lists: &[(&Path, &[Line])]) -> Result<(usize, Vec<Vec<i64>>)> {
    let all_int = lists
        .iter()
        .all(|(_, ls)| ls.iter().all(|l| l.label.parse::<i64>().is_ok()));
    if all_int {
        let mut out = Vec::new();
        let mut max = 0i64;
        for (file, ls) in lists {
            let mut labels = Vec::with_capacity(ls.len());
            for l in *ls {
                let v: i64 = l.label.parse().unwrap_or(-1);
                if v < 0 {
                    return Err(Error::data(
                        file,
                        format!("line {}: negative label {v}", l.line),
                    ));
                }
                max = max.max(v);
                labels.push(v);
            }
            out.push(labels);
        }
        return Ok((max as usize + 1, out));
    }
    // Class names, taken from the training list (the first).
    let mut names: Vec<&str> = lists[0].1.iter().map(|l| l.label.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for (file, ls) in lists {
        let mut labels = Vec::with_capacity(ls.len());
        for l in *ls {
            let i = names.binary_search(&l.label.as_str()).map_err(|_| {
                Error::data(
                    file,
                    format!(
                        "line {}: class `{}` does not occur in the training list",
                        l.line, l.label
                    ),
                )
            })?;
            labels.push(i as i64);
        }
        out.push(labels);
    }
    Ok((names.len(), out))
}

/// Opens the training and test splits.
pub fn open_pair(cfg: &ListConfig, channels: usize) -> Result<(FileSource, FileSource)> {
    let train = read_list(&cfg.train, cfg)?;
    let test = match &cfg.test {
        Some(t) => Some(read_list(t, cfg)?),
        None => None,
    };
    let mut lists: Vec<(&Path, &[Line])> = vec![(&cfg.train, &train)];
    if let (Some(t), Some(tl)) = (&cfg.test, &test) {
        lists.push((t, tl));
    }
    let (classes, labels) = label_lists(&lists)?;
    let entries = |ls: &[Line], labels: &[i64]| -> Vec<(PathBuf, i64)> {
        ls.iter()
            .zip(labels)
            .map(|(l, &y)| (l.path.clone(), y))
            .collect()
    };
    let train_src = FileSource::new(entries(&train, &labels[0]), classes, channels);
    match test {
        Some(tl) => Ok((
            train_src,
            FileSource::new(entries(&tl, &labels[1]), classes, channels),
        )),
        None => {
            let (tr, te) = super::fraction_split(&labels[0], cfg.test_fraction.unwrap_or(0.0));
            Ok((train_src.subset(&tr), train_src.subset(&te)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::folder::tests::write_image;
    use crate::source::Source;

    fn cfg(train: PathBuf, test: Option<PathBuf>) -> ListConfig {
        ListConfig {
            train,
            test_fraction: test.is_none().then_some(0.0),
            test,
            path_column: "path".into(),
            label_column: "label".into(),
            root: None,
        }
    }

    #[test]
    fn csv_with_names_resolves_paths_from_the_list_folder() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pets");
        write_image(&d.join("images/a.jpg"), 6, 4, 1);
        write_image(&d.join("images/b.png"), 5, 5, 2);
        std::fs::write(
            d.join("train.csv"),
            "# Oxford-IIIT Pet style\npath,species,label\nimages/a.jpg,cat,\"Siamese\"\nimages/b.png,dog,beagle\n",
        )
        .unwrap();
        std::fs::write(d.join("test.csv"), "label,path\nbeagle,images/a.jpg\n").unwrap();
        let (train, test) =
            open_pair(&cfg(d.join("train.csv"), Some(d.join("test.csv"))), 3).unwrap();
        assert_eq!(train.num_classes(), 2);
        // Sorted names: "Siamese" < "beagle" in byte order.
        assert_eq!(train.get(0).unwrap().label, 0);
        assert_eq!(train.get(1).unwrap().label, 1);
        assert_eq!(train.get(1).unwrap().image.height, 5);
        assert_eq!(test.get(0).unwrap().label, 1);
        assert!(test.locate(0).ends_with("pets/images/a.jpg"));
    }

    #[test]
    fn jsonl_with_integer_labels_and_a_root() {
        let t = tempfile::tempdir().unwrap();
        write_image(&t.path().join("img/x.png"), 3, 3, 1);
        let list = t.path().join("lists/train.jsonl");
        std::fs::create_dir_all(list.parent().unwrap()).unwrap();
        std::fs::write(
            &list,
            "{\"file\": \"img/x.png\", \"y\": 4}\n\n{\"file\": \"img/x.png\", \"y\": \"1\"}\n",
        )
        .unwrap();
        let mut c = cfg(list, None);
        c.path_column = "file".into();
        c.label_column = "y".into();
        c.root = Some(t.path().to_path_buf());
        let (train, test) = open_pair(&c, 1).unwrap();
        assert_eq!(train.num_classes(), 5);
        assert_eq!((train.len(), test.len()), (2, 0));
        assert_eq!(train.get(0).unwrap().label, 4);
        assert_eq!(train.get(0).unwrap().image.channels, 1);
    }

    #[test]
    fn malformed_lists_name_the_file_and_line() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("l.csv");
        std::fs::write(&f, "path,label\na.jpg,1\nb.jpg,\n").unwrap();
        let e = open_pair(&cfg(f.clone(), None), 3).unwrap_err().to_string();
        assert!(
            e.contains("l.csv") && e.contains("line 3") && e.contains("empty"),
            "{e}"
        );
        std::fs::write(&f, "file,label\na.jpg,1\n").unwrap();
        let e = open_pair(&cfg(f.clone(), None), 3).unwrap_err().to_string();
        assert!(e.contains("no column `path`"), "{e}");
        std::fs::write(&f, "path,label\na.jpg,-2\n").unwrap();
        let e = open_pair(&cfg(f.clone(), None), 3).unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        let j = t.path().join("l.jsonl");
        std::fs::write(&j, "{\"path\": \"a.jpg\", \"label\": 1}\n{oops\n").unwrap();
        let e = open_pair(&cfg(j.clone(), None), 3).unwrap_err().to_string();
        assert!(
            e.contains("l.jsonl") && e.contains("line 2") && e.contains("not JSON"),
            "{e}"
        );
        let x = t.path().join("l.txt");
        std::fs::write(&x, "whatever").unwrap();
        let e = open_pair(&cfg(x, None), 3).unwrap_err().to_string();
        assert!(e.contains("unknown list format"), "{e}");
        let tr = t.path().join("tr.csv");
        let te = t.path().join("te.csv");
        std::fs::write(&tr, "path,label\na.jpg,cat\n").unwrap();
        std::fs::write(&te, "path,label\nb.jpg,dog\n").unwrap();
        let e = open_pair(&cfg(tr, Some(te)), 3).unwrap_err().to_string();
        assert!(e.contains("te.csv") && e.contains("`dog`"), "{e}");
    }
}
