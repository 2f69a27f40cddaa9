//! WebDataset tar shards: the files of a tar that share a key form one sample.
//!
//! The key of `dir/000123.jpg` is `dir/000123` (everything before the first dot of the file
//! name, as the `webdataset` package does); consecutive entries with the same key are one
//! sample. The image is the first entry whose extension is one of `image_extensions`
//! (default `jpg`, `jpeg`, `png`), the label the first of `label_extensions` (default `cls`,
//! then `json`): `.cls` holds a class index as text, `.json` a number or an object whose
//! `json_label` field (default `label`) is one. A shard compressed with gzip (`.tar.gz`,
//! `.tgz`, or any name: the magic bytes decide) is decompressed as it is read.
//!
//! A sample without an image or without a label is a sample error (`on_error`). A tar that
//! is malformed or cut short (a truncated gzip stream, a header that is not one) keeps the
//! samples before the damage; the damage itself is reported under `on_error` (see
//! `docs/streaming.md`).
use std::io::Read;

use super::{Payload, RawRecord};

/// How samples are assembled from a tar's files.
#[derive(Debug, Clone)]
pub struct TarLayout {
    /// Image extensions, lower case, without the dot.
    pub image_extensions: Vec<String>,
    /// Label extensions in order of preference (`cls`, `json`).
    pub label_extensions: Vec<String>,
    /// Field of a `.json` label object holding the class index.
    pub json_label: String,
    /// Largest entry read, in bytes (`source.limits.max_tar_entry_bytes`): a header that
    /// claims more is damage, found before anything is allocated for it.
    pub max_entry_bytes: u64,
}

/// True when `head` starts with the gzip magic bytes.
pub fn is_gzip(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
}

/// Calls `f` with every sample of the tar read from `input`, in tar order, until `f` returns
/// false. `Err(message)` is damage: the samples before it were delivered, the group being
/// assembled when it happened was not.
pub fn for_each_sample(
    input: impl Read,
    layout: &TarLayout,
    mut f: impl FnMut(RawRecord) -> bool,
) -> std::result::Result<(), String> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let head = {
        use std::io::BufRead;
        input
            .fill_buf()
            .map_err(|e| format!("cannot read: {e}"))?
            .to_vec()
    };
    let reader: Box<dyn Read> = if is_gzip(&head) {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar file: {e}"))?;
    let mut group: Option<Group> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("malformed or truncated tar: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("malformed tar (entry name): {e}"))?
            .to_string_lossy()
            .to_string();
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path.as_str()),
        };
        if name.starts_with('.') || name.is_empty() {
            continue;
        }
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        let key = format!("{dir}{stem}");
        let ext = ext.to_ascii_lowercase();
        let wanted =
            layout.image_extensions.contains(&ext) || layout.label_extensions.contains(&ext);
        // A new key closes the group before: it is delivered before this entry is read,
        // so damage in this entry does not take the complete sample before it along.
        if group.as_ref().is_some_and(|g| g.key != key) {
            let done = group.take().map(|g| g.finish(layout));
            if let Some(r) = done {
                if !f(r) {
                    return Ok(());
                }
            }
        }
        let mut data = Vec::new();
        if wanted {
            let limits = crate::source::Limits {
                max_tar_entry_bytes: layout.max_entry_bytes,
                ..Default::default()
            };
            limits.check_tar_entry(&path, entry.size())?;
            entry
                .read_to_end(&mut data)
                .map_err(|e| format!("truncated or corrupt data in `{path}`: {e}"))?;
        }
        let g = group.get_or_insert_with(|| Group {
            key,
            files: Vec::new(),
        });
        g.files.push((ext, data));
    }
    if let Some(g) = group {
        f(g.finish(layout));
    }
    Ok(())
}

struct Group {
    key: String,
    files: Vec<(String, Vec<u8>)>,
}

impl Group {
    fn finish(mut self, layout: &TarLayout) -> RawRecord {
        let image = layout
            .image_extensions
            .iter()
            .find_map(|x| self.files.iter().position(|(e, _)| e == x))
            .map(|i| Payload::Bytes(std::mem::take(&mut self.files[i].1)))
            .unwrap_or_else(|| {
                Payload::Missing(format!(
                    "no image (none of .{} in the shard for this key)",
                    layout.image_extensions.join(", .")
                ))
            });
        let label = layout
            .label_extensions
            .iter()
            .find_map(|x| {
                self.files
                    .iter()
                    .find(|(e, _)| e == x)
                    .map(|(e, d)| parse_label(e, d, &layout.json_label))
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "no label (none of .{} for this key)",
                    layout.label_extensions.join(", .")
                ))
            });
        RawRecord {
            key: self.key,
            label,
            image,
        }
    }
}

/// A class index from a `.cls` (text) or `.json` file.
fn parse_label(ext: &str, data: &[u8], field: &str) -> std::result::Result<i64, String> {
    let text = std::str::from_utf8(data).map_err(|_| format!("the .{ext} label is not text"))?;
    let value: i64 = if ext == "json" {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the .json label is not JSON: {e}"))?;
        let n = match &v {
            serde_json::Value::Object(o) => o
                .get(field)
                .ok_or_else(|| format!("the .json label has no `{field}` field"))?,
            v => v,
        };
        n.as_i64()
            .ok_or_else(|| format!("the .json label `{n}` is not a whole number"))?
    } else {
        text.trim()
            .parse()
            .map_err(|_| format!("the .{ext} label `{}` is not a whole number", text.trim()))?
    };
    if value < 0 {
        return Err(format!("negative label {value}"));
    }
    Ok(value)
}

/// Writes samples `(key, image extension, image bytes, label)` as a tar with `.cls` labels
/// (what `saln-pipe shard` and the tests write).
pub fn write_tar(
    out: impl std::io::Write,
    samples: impl IntoIterator<Item = (String, &'static str, Vec<u8>, i64)>,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    let mut add = |name: String, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data)
    };
    for (key, ext, image, label) in samples {
        add(format!("{key}.{ext}"), &image)?;
        add(format!("{key}.cls"), label.to_string().as_bytes())?;
    }
    let mut out = b.into_inner()?;
    std::io::Write::flush(&mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> TarLayout {
        TarLayout {
            image_extensions: vec!["jpg".into(), "png".into()],
            label_extensions: vec!["cls".into(), "json".into()],
            json_label: "label".into(),
            max_entry_bytes: 1 << 20,
        }
    }

    fn read(bytes: &[u8]) -> (Vec<RawRecord>, std::result::Result<(), String>) {
        let mut v = Vec::new();
        let r = for_each_sample(bytes, &layout(), |s| {
            v.push(s);
            true
        });
        (v, r)
    }

    #[test]
    fn keys_group_files_and_labels_come_from_cls_or_json() {
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            let mut add = |name: &str, data: &[u8]| {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, data).unwrap();
            };
            add("a/001.jpg", b"JPG1");
            add("a/001.cls", b" 3\n");
            add("a/002.png", b"PNG2");
            add("a/002.json", br#"{"label": 7, "caption": "x"}"#);
            add("a/003.jpg", b"JPG3");
            add("a/003.txt", b"no label here");
            add("a/004.cls", b"1");
            b.finish().unwrap();
        }
        let (v, r) = read(&buf);
        r.unwrap();
        let keys: Vec<&str> = v.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a/001", "a/002", "a/003", "a/004"]);
        assert_eq!(v[0].label, Ok(3));
        assert_eq!(v[1].label, Ok(7));
        assert!(matches!(&v[1].image, Payload::Bytes(b) if b == b"PNG2"));
        assert!(v[2].label.as_ref().unwrap_err().contains("no label"));
        assert!(matches!(&v[3].image, Payload::Missing(m) if m.contains("no image")));
    }

    #[test]
    fn gzip_is_detected_and_damage_keeps_what_came_before() {
        let mut tar_bytes = Vec::new();
        let samples = (0..20).map(|i| (format!("{i:04}"), "jpg", vec![i as u8; 3000], i % 3));
        write_tar(&mut tar_bytes, samples).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
        let gz = gz.finish().unwrap();
        let (v, r) = read(&gz);
        r.unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(v[5].label, Ok(2));
        let (v, r) = read(&gz[..gz.len() / 2]);
        assert!(
            r.unwrap_err().contains("truncated"),
            "a cut gzip stream is damage"
        );
        assert!(!v.is_empty() && v.len() < 20);
        // A header that is not one.
        let mut bad = tar_bytes.clone();
        let at = 512 + 3072 + 1024; // the third entry's header (0001.jpg)
        bad[at + 148..at + 156].copy_from_slice(b"garbage!");
        let (v, r) = read(&bad);
        assert!(r.unwrap_err().contains("malformed"));
        assert_eq!(v.len(), 0, "the first sample's group was cut by the damage");
    }

    #[test]
    fn an_entry_over_the_size_limit_is_damage_found_from_its_header() {
        let mut buf = Vec::new();
        let samples = (0..4).map(|i| {
            let size = if i == 2 { (1 << 20) + 1 } else { 100 };
            (format!("{i:04}"), "jpg", vec![1u8; size], 0)
        });
        write_tar(&mut buf, samples).unwrap();
        let (v, r) = read(&buf);
        let e = r.unwrap_err();
        assert!(
            e.contains("0002.jpg")
                && e.contains("1048577 bytes")
                && e.contains("source.limits.max_tar_entry_bytes"),
            "{e}"
        );
        assert_eq!(v.len(), 2, "the samples before it are delivered");
    }
}
