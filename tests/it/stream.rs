//! Streaming sources: WebDataset tar shards (written here, and by Python's `webdataset`),
//! Parquet shards, the documented handling of damaged shards under `on_error`, ranks, resume
//! positions, and object storage for real against a local S3 server (moto).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saln::augment::Augmenter;
use saln::batch::{run_loader, LoaderPlan, LoaderSummary, Shard, SuperBatch, Uneven};
use saln::config::PipelineConfig;
use saln::pipeline::{Cancel, Msg, StageStats};
use saln::source::decode::encode;
use saln::source::stream::{self, webdataset, StreamConfig, StreamFormat, StreamPosition};
use saln::source::{Limits, OnError, RawImage, Source};

/// Shards x samples per shard of the test data.
const SHARDS: usize = 6;
const PER: usize = 20;

/// The label of sample `i` of shard `s` (and the grey value its image is filled with).
fn label_of(s: usize, i: usize) -> i64 {
    ((s * 7 + i) % 3) as i64
}

fn png(v: u8) -> Vec<u8> {
    let img = RawImage {
        channels: 1,
        height: 6,
        width: 5,
        data: vec![v; 30],
    };
    encode(&img, image::ImageFormat::Png).unwrap()
}

/// `SHARDS` tar shards of `PER` samples each in `dir` (`shard-00000{s}.tar`; the last one
/// gzipped as `.tar.gz`); keys `s{s}/{i:04}`; the image of sample i of shard s is filled
/// with `10 * label + 1`.
fn write_shards(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..SHARDS)
        .map(|s| {
            let samples = (0..PER).map(move |i| {
                let l = label_of(s, i);
                (format!("s{s}/{i:04}"), "png", png(10 * l as u8 + 1), l)
            });
            let mut tar = Vec::new();
            webdataset::write_tar(&mut tar, samples).unwrap();
            let gz = s == SHARDS - 1;
            let path = dir.join(format!("shard-{s:06}.tar{}", if gz { ".gz" } else { "" }));
            let bytes = if gz {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                e.finish().unwrap()
            } else {
                tar
            };
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

fn cfg(train: Vec<String>, test: Vec<String>) -> StreamConfig {
    let mut c = StreamConfig::new(StreamFormat::Webdataset, train, test);
    c.shuffle_buffer = 16;
    c
}

fn plan(n: usize, workers: usize, shard: Shard) -> LoaderPlan {
    LoaderPlan {
        indices: (0..n).collect(),
        epochs: 2,
        size: 7,
        drop_last: false,
        seed: 11,
        workers,
        prefetch: 3,
        on_error: OnError::Skip,
        shard,
        start: 0,
        carried: LoaderSummary::default(),
    }
}

fn load(src: Arc<dyn Source>, plan: LoaderPlan) -> saln::Result<(Vec<SuperBatch>, LoaderSummary)> {
    let aug = Arc::new(Augmenter::new(
        serde_saphyr::from_str("- resize: { size: [6, 5] }").unwrap(),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let h = std::thread::spawn(move || {
        let mut v = Vec::new();
        while let Some(m) = rx.blocking_recv() {
            if let Msg::Data(sb) = m {
                v.push(sb);
            }
        }
        v
    });
    let r = run_loader(
        src,
        aug,
        plan,
        tx,
        &Arc::new(StageStats::new("loader")),
        &Cancel::default(),
    );
    let sbs = h.join().unwrap();
    r.map(|s| (sbs, s))
}

fn strings(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// Checks every sample of `sbs` against its id: label, and the grey value of its image.
fn assert_labels_match_ids(src: &dyn Source, sbs: &[SuperBatch]) {
    for sb in sbs {
        let per = sb.shape.0 * sb.shape.1 * sb.shape.2;
        for (k, &id) in sb.ids.iter().enumerate() {
            let (s, i) = (id as usize / PER, id as usize % PER);
            assert_eq!(sb.labels[k], label_of(s, i), "id {id}");
            let name = src.locate(id as usize);
            assert!(
                name.ends_with(&format!(
                    "shard-{s:06}.tar{}#s{s}/{i:04}",
                    if s == SHARDS - 1 { ".gz" } else { "" }
                )),
                "{name}"
            );
            let px = sb.pixels[k * per];
            assert!(
                (px * 255.0 - (10 * sb.labels[k] + 1) as f32).abs() < 0.6,
                "{px}"
            );
        }
    }
}

#[test]
fn tar_shards_are_read_with_their_labels_and_ids_whatever_the_worker_count() {
    let t = tempfile::tempdir().unwrap();
    let shards = write_shards(&t.path().join("shards"));
    // A brace range and a glob name the same shards as the list.
    let spec = format!(
        "{}/shard-{{000000..000004}}.tar",
        t.path().join("shards").display()
    );
    let glob = format!("{}/shard-*.tar.gz", t.path().join("shards").display());
    let c = cfg(vec![spec, glob], strings(&shards[..1]));
    let (train, test) = stream::open_pair(&c, 1, OnError::Fail, &Limits::default()).unwrap();
    assert_eq!(train.len(), SHARDS * PER);
    assert_eq!((train.num_classes(), test.len()), (3, PER));
    assert_eq!(test.get(3).unwrap().label, label_of(0, 3));
    let train: Arc<dyn Source> = Arc::new(train);
    let (one, s1) = load(train.clone(), plan(SHARDS * PER, 1, Shard::default())).unwrap();
    assert_eq!((s1.samples, s1.skipped), (2 * (SHARDS * PER) as u64, 0));
    assert_labels_match_ids(train.as_ref(), &one);
    // Every sample once per epoch, in an order that changes between epochs.
    let epoch = |e: usize| -> Vec<u64> {
        one.iter()
            .filter(|sb| sb.epoch == e)
            .flat_map(|sb| sb.ids.clone())
            .collect()
    };
    let (e0, e1) = (epoch(0), epoch(1));
    assert_ne!(e0, e1);
    let mut sorted = e0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..(SHARDS * PER) as u64).collect::<Vec<_>>());
    for workers in [2, 5] {
        let (many, _) = load(train.clone(), plan(SHARDS * PER, workers, Shard::default())).unwrap();
        assert_eq!(one, many, "{workers} workers");
    }
    // Resumed at super-batch k (what a checkpoint records), in either epoch: the rest of the
    // run comes out the same (the stream is read again up to k, not decoded).
    for k in [5, 23] {
        let mut p = plan(SHARDS * PER, 2, Shard::default());
        p.start = k;
        let (rest, summary) = load(train.clone(), p).unwrap();
        // Everything but the loader's running figures (`loaded`), which start at the
        // resumed position.
        let key = |v: &[SuperBatch]| -> Vec<SuperBatch> {
            v.iter()
                .map(|s| SuperBatch {
                    loaded: LoaderSummary::default(),
                    ..s.clone()
                })
                .collect()
        };
        assert_eq!(key(&rest), key(&one[k as usize..]), "resumed at {k}");
        assert_eq!(summary.superbatches, one.len() as u64 - k);
    }
}

#[test]
fn ranks_read_disjoint_shards_and_make_the_same_number_of_superbatches() {
    let t = tempfile::tempdir().unwrap();
    let shards = write_shards(&t.path().join("shards"));
    let c = cfg(strings(&shards), strings(&shards[..1]));
    let train: Arc<dyn Source> = Arc::new(
        stream::open_pair(&c, 1, OnError::Fail, &Limits::default())
            .unwrap()
            .0,
    );
    for world_size in [2, 3, 4] {
        let mut seen = Vec::new();
        let mut counts = Vec::new();
        for rank in 0..world_size {
            let shard = Shard {
                rank,
                world_size,
                uneven: Uneven::Drop,
            };
            let (sbs, _) = load(train.clone(), plan(SHARDS * PER, 2, shard)).unwrap();
            counts.push(sbs.len());
            seen.extend(
                sbs.iter()
                    .filter(|s| s.epoch == 0)
                    .flat_map(|s| s.ids.clone()),
            );
        }
        assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
        let n = seen.len();
        assert_eq!(n, (SHARDS * PER) / world_size * world_size);
        if SHARDS % world_size == 0 {
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), n, "equal shards: every sample once");
        }
    }
    let e = load(
        train,
        plan(
            SHARDS * PER,
            1,
            Shard {
                rank: 0,
                world_size: 7,
                uneven: Uneven::Drop,
            },
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("6 training shards cannot be split over 7 ranks"),
        "{e}"
    );
}

#[test]
fn a_reader_resumes_from_a_position() {
    let t = tempfile::tempdir().unwrap();
    let shards = write_shards(&t.path().join("shards"));
    let c = cfg(strings(&shards), strings(&shards[..1]));
    let (train, _) = stream::open_pair(&c, 1, OnError::Fail, &Limits::default()).unwrap();
    let take = 100;
    let start = StreamPosition {
        epoch: 1,
        ..Default::default()
    };
    let mut full = train.reader(3, 0, 1, take, start).unwrap();
    let head: Vec<u64> = full.by_ref().take(37).map(|r| r.unwrap().id).collect();
    assert_eq!(head.len(), 37);
    let at = full.position();
    assert_eq!((at.epoch, at.offset), (1, 37));
    let rest: Vec<u64> = full.map(|r| r.unwrap().id).collect();
    let resumed: Vec<u64> = train
        .reader(3, 0, 1, take, at)
        .unwrap()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(resumed, rest);
    assert_eq!(head.len() + rest.len(), take as usize);
    let bad = StreamPosition {
        shard: at.shard + 1,
        ..at
    };
    let e = train.reader(3, 0, 1, take, bad).err().unwrap().to_string();
    assert!(e.contains("cannot resume"), "{e}");
}

/// The damage kinds and what `on_error` makes of them (docs/streaming.md, "Damaged shards").
#[test]
fn damaged_shards_and_unreachable_urls_follow_on_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("shards");
    let good = write_shards(&dir);
    let tar = std::fs::read(&good[0]).unwrap();
    // A malformed tar: the 5th sample's first header has a garbage checksum. Every sample is
    // 4 blocks of 512 bytes (image header and data, label header and data).
    let mut malformed = tar.clone();
    let header = 4 * 2048;
    malformed[header + 148..header + 156].copy_from_slice(b"garbage!");
    let malformed_path = dir.join("malformed.tar");
    std::fs::write(&malformed_path, &malformed).unwrap();
    // A truncated gzip.
    let gz = std::fs::read(&good[SHARDS - 1]).unwrap();
    let truncated = dir.join("truncated.tar.gz");
    std::fs::write(&truncated, &gz[..gz.len() * 2 / 3]).unwrap();
    // A shard whose sample 3 has no label.
    let mut missing = Vec::new();
    {
        let mut b = tar::Builder::new(&mut missing);
        for i in 0..5 {
            for (ext, data) in [("png", png(1)), ("cls", b"0".to_vec())] {
                if i == 3 && ext == "cls" {
                    continue;
                }
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("m/{i}.{ext}"), &data[..])
                    .unwrap();
            }
        }
        b.finish().unwrap();
    }
    let missing_path = dir.join("missing-label.tar");
    std::fs::write(&missing_path, &missing).unwrap();
    let unreachable = "http://127.0.0.1:9/shards/nowhere.tar".to_string();

    let open = |extra: &str, on_error| {
        let mut c = cfg(
            vec![good[1].display().to_string(), extra.to_string()],
            strings(&good[..1]),
        );
        c.storage.retries = 0;
        c.storage.timeout_s = 2.0;
        stream::open_pair(&c, 1, on_error, &Limits::default())
    };
    // on_error: fail — opening names the shard and what is wrong.
    for (shard, what) in [
        (malformed_path.display().to_string(), "malformed"),
        (truncated.display().to_string(), "truncated"),
        (unreachable.clone(), "cannot read"),
    ] {
        let e = open(&shard, OnError::Fail).err().unwrap().to_string();
        assert!(e.contains(&shard) && e.contains(what), "{shard}: {e}");
    }
    // on_error: skip — the samples before the damage are used, the damage is named.
    let (src, _) = open(&malformed_path.display().to_string(), OnError::Skip).unwrap();
    // Samples 0-2 are kept; sample 3, being assembled when the damage came, is not.
    assert_eq!(src.len(), PER + 3);
    assert!(src.problems()[0].contains("malformed.tar") && src.problems()[0].contains("malformed"));
    let (src, _) = open(&truncated.display().to_string(), OnError::Skip).unwrap();
    assert!(src.len() > PER && src.len() < 2 * PER);
    assert!(src.problems()[0].contains("truncated.tar.gz"));
    let (src, _) = open(&unreachable, OnError::Skip).unwrap();
    assert_eq!(src.len(), PER);
    assert!(
        src.problems()[0].contains(&unreachable),
        "{:?}",
        src.problems()
    );
    // A missing label is a sample error: skipped and named, or the run stops naming it.
    let (src, _) = open(&missing_path.display().to_string(), OnError::Skip).unwrap();
    assert_eq!(src.len(), PER + 5);
    let src: Arc<dyn Source> = Arc::new(src);
    let (_, summary) = load(src.clone(), plan(PER + 5, 2, Shard::default())).unwrap();
    assert_eq!(summary.skipped, 2, "once per epoch");
    assert!(
        summary.first_skipped[0].contains("missing-label.tar#m/3")
            && summary.first_skipped[0].contains("no label"),
        "{:?}",
        summary.first_skipped
    );
    let mut p = plan(PER + 5, 2, Shard::default());
    p.on_error = OnError::Fail;
    let e = load(src, p).unwrap_err().to_string();
    assert!(
        e.contains("missing-label.tar#m/3") && e.contains("no label"),
        "{e}"
    );
}

#[test]
fn parquet_shards_stream_row_groups_and_resolve_image_paths() {
    use saln::source::parquet::{write_image_table, ImageRow};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("pq");
    std::fs::create_dir_all(dir.join("imgs")).unwrap();
    let mut names = Vec::new();
    for s in 0..3 {
        let rows: Vec<ImageRow> = (0..PER)
            .map(|i| {
                let l = label_of(s, i);
                if i % 4 == 0 {
                    // As `datasets` writes a table from local files: null bytes, a path.
                    let rel = format!("imgs/{s}-{i}.png");
                    std::fs::write(dir.join(&rel), png(10 * l as u8 + 1)).unwrap();
                    ImageRow {
                        bytes: None,
                        path: Some(rel),
                        label: Some(l),
                    }
                } else {
                    ImageRow {
                        bytes: Some(png(10 * l as u8 + 1)),
                        path: None,
                        label: Some(l),
                    }
                }
            })
            .collect();
        let p = dir.join(format!("train-{s}.parquet"));
        write_image_table(&p, &rows, false).unwrap();
        names.push(p.display().to_string());
    }
    let mut c = StreamConfig::new(StreamFormat::Parquet, names.clone(), names[..1].to_vec());
    c.shuffle_buffer = 10;
    let (train, test) = stream::open_pair(&c, 1, OnError::Fail, &Limits::default()).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.num_classes()),
        (3 * PER, PER, 3)
    );
    assert!(train.locate(PER + 4).ends_with("train-1.parquet#4"));
    assert_eq!(
        test.get(4).unwrap().image.data[0],
        10 * label_of(0, 4) as u8 + 1
    );
    let train: Arc<dyn Source> = Arc::new(train);
    let (sbs, s) = load(train, plan(3 * PER, 2, Shard::default())).unwrap();
    assert_eq!((s.samples, s.skipped), (6 * PER as u64, 0));
    for sb in &sbs {
        for (k, &id) in sb.ids.iter().enumerate() {
            let (s, i) = (id as usize / PER, id as usize % PER);
            assert_eq!(sb.labels[k], label_of(s, i));
            let px = sb.pixels[k * 30] * 255.0;
            assert!((px - (10 * sb.labels[k] + 1) as f32).abs() < 0.6);
        }
    }
}

/// The Python interpreter of the project venv (`scripts/setup.sh` makes it).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("SALN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/saln/venv")
        });
    venv.join("bin/python")
}

/// `Some(python)` when the venv has `module`; otherwise prints why the test does not run.
/// The venv's Python, which must have `module` (`scripts/setup.sh stream` installs it, and
/// `make test` runs setup first): a missing module fails the test rather than skipping it.
fn python_with(module: &str) -> PathBuf {
    let py = venv_python();
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} has no `{module}`: run `scripts/setup.sh stream` (make test does)",
        py.display()
    );
    py
}

#[test]
fn shards_written_by_pythons_webdataset_are_read() {
    let py = python_with("webdataset");
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img.png");
    std::fs::write(&img, png(42)).unwrap();
    let shard = t.path().join("py-000000.tar");
    let script = format!(
        r#"
import json, webdataset as wds
png = open({img:?}, "rb").read()
with wds.TarWriter({shard:?}) as w:
    for i in range(10):
        s = {{"__key__": "sample%04d" % i, "png": png}}
        if i % 2: s["cls"] = i % 4
        else: s["json"] = {{"label": i % 4, "caption": "c%d" % i}}
        w.write(s)
"#,
        img = img.display().to_string(),
        shard = shard.display().to_string()
    );
    let out = std::process::Command::new(&py)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = cfg(
        vec![shard.display().to_string()],
        vec![shard.display().to_string()],
    );
    let (train, test) = stream::open_pair(&c, 1, OnError::Fail, &Limits::default()).unwrap();
    assert_eq!((train.len(), train.num_classes()), (10, 4));
    for i in 0..10 {
        let s = test.get(i).unwrap();
        assert_eq!(s.label, (i % 4) as i64);
        assert_eq!(s.image.data[0], 42);
        assert!(test
            .locate(i)
            .ends_with(&format!("py-000000.tar#sample{i:04}")));
    }
}

/// A local S3 server (moto) for the length of a test.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(py: &Path) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(py)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Held by the guard from here on: killed and waited for on every path, a panic included.
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return moto;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("moto did not start on {}", moto.endpoint);
}

/// Uploads `files` to `s3://bucket/prefix/<name>` on the server at `endpoint`.
fn upload(py: &Path, endpoint: &str, bucket: &str, prefix: &str, files: &[PathBuf]) {
    let script = format!(
        r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url={endpoint:?}, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
s3.create_bucket(Bucket={bucket:?})
for f in sys.argv[1:]:
    s3.upload_file(f, {bucket:?}, {prefix:?} + "/" + f.rsplit("/", 1)[-1])
"#
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(&script)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn curate_yaml(dir: &Path, stream: &str) -> PipelineConfig {
    let yaml = format!(
        "seed: 5\n\
         device: cpu\n\
         source: {{ stream: {stream}, holdout: 0, channels: 1 }}\n\
         augment: {{ workers: 2, ops: [ {{ resize: {{ size: [6, 5] }} }}, {{ hflip: {{ p: 0.5 }} }} ] }}\n\
         superbatch: {{ size: 16, prefetch: 2 }}\n\
         selection: {{ policy: uniform, keep_ratio: 0.5 }}\n\
         trainer: {{ epochs: 2, arch: {{ conv1: 4, conv2: 8, hidden: 16 }} }}\n\
         export: {{ dir: '{e}', include_rejected: true }}\n\
         report: {{ path: '{r}', progress_seconds: 0 }}\n",
        e = dir.join("export").display(),
        r = dir.join("report.json").display(),
    );
    PipelineConfig::from_yaml_str(&yaml, "stream-test.yaml").unwrap()
}

/// `(sample_id, kept)` of every exported row, in order.
fn exported(dir: &Path) -> Vec<(u64, bool, String)> {
    saln::export::read::read(&dir.join("export"), false)
        .unwrap()
        .into_iter()
        .map(|r| (r.sample_id, r.kept, r.source))
        .collect()
}

#[test]
fn s3_shards_on_a_local_server_select_what_the_same_local_shards_do() {
    let py = python_with("moto.server");
    let t = tempfile::tempdir().unwrap();
    let shards = write_shards(&t.path().join("shards"));
    let moto = start_moto(&py);
    upload(&py, &moto.endpoint, "data", "wds", &shards);

    let local = t.path().join("local");
    let list = |v: &[PathBuf]| {
        format!(
            "[{}]",
            strings(v)
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let cfg_local = curate_yaml(
        &local,
        &format!(
            "{{ format: webdataset, train: {}, test: {}, shuffle_buffer: 30 }}",
            list(&shards),
            list(&shards[..1])
        ),
    );
    let r = saln::pipeline::curate(&cfg_local, Cancel::default(), None).unwrap();
    assert_eq!(r.status, saln::report::Status::Completed);

    let remote = t.path().join("remote");
    let storage = format!(
        "{{ endpoint: '{}', options: {{ aws_access_key_id: test, aws_secret_access_key: test }} }}",
        moto.endpoint
    );
    let cfg_s3 = curate_yaml(
        &remote,
        &format!(
            "{{ format: webdataset, shuffle_buffer: 30, storage: {storage}, \
               train: ['s3://data/wds/shard-{{000000..000004}}.tar', 's3://data/wds/shard-000005.tar.gz'], \
               test: 's3://data/wds/shard-000000.tar' }}"
        ),
    );
    let r = saln::pipeline::curate(&cfg_s3, Cancel::default(), None).unwrap();
    assert_eq!(r.status, saln::report::Status::Completed);

    let (a, b) = (exported(&local), exported(&remote));
    assert_eq!(a.len(), 2 * SHARDS * PER);
    let ids = |v: &[(u64, bool, String)]| v.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "same shards, same selection");
    assert!(
        b[0].2.starts_with("s3://data/wds/shard-00000") && b[0].2.contains('#'),
        "{}",
        b[0].2
    );
    let kept: BTreeMap<u64, usize> = a.iter().filter(|r| r.1).fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.0).or_default() += 1;
        m
    });
    assert!(!kept.is_empty());

    // A missing object is an error naming its URL.
    let mut c = cfg(
        vec!["s3://data/wds/nothing-here.tar".into()],
        vec!["s3://data/wds/shard-000000.tar".into()],
    );
    c.storage.endpoint = Some(moto.endpoint.clone());
    c.storage
        .options
        .insert("aws_access_key_id".into(), "test".into());
    c.storage
        .options
        .insert("aws_secret_access_key".into(), "test".into());
    let e = stream::open_pair(&c, 1, OnError::Fail, &Limits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("s3://data/wds/nothing-here.tar") && e.contains("not found"),
        "{e}"
    );
}

/// A curation of tar shards SIGKILLed mid-epoch (inside an export file of epoch 1) and
/// resumed with `saln-pipe curate --resume` writes the uninterrupted curation's rows: the
/// resumed loader reads epoch 1's shards again up to its position without decoding them.
#[test]
fn a_killed_stream_curation_resumes_to_the_same_export() {
    let t = tempfile::tempdir().unwrap();
    let shards = write_shards(&t.path().join("shards"));
    let list = strings(&shards)
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = |dir: &Path| -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("p.yaml");
        std::fs::write(
            &path,
            format!(
                "seed: 5\n\
                 device: cpu\n\
                 source: {{ stream: {{ format: webdataset, train: [{list}], test: ['{test}'], shuffle_buffer: 30 }}, holdout: 0, channels: 1 }}\n\
                 augment: {{ workers: 2, ops: [ {{ resize: {{ size: [6, 5] }} }}, {{ hflip: {{ p: 0.5 }} }} ] }}\n\
                 superbatch: {{ size: 16, prefetch: 2 }}\n\
                 selection: {{ policy: uniform, keep_ratio: 0.5 }}\n\
                 trainer: {{ epochs: 2 }}\n\
                 export: {{ dir: '{e}', include_rejected: true, rows_per_file: 40 }}\n\
                 checkpoint: {{ dir: '{c}', every_steps: 3, every_seconds: 0 }}\n\
                 report: {{ path: '{r}', progress_seconds: 0 }}\n",
                test = shards[0].display(),
                e = dir.join("export").display(),
                c = dir.join("ckpt").display(),
                r = dir.join("report.json").display(),
            ),
        )
        .unwrap();
        path
    };
    let curate = |cfg: &Path, resume: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_saln-pipe"));
        c.arg("curate").arg(cfg);
        if resume {
            c.arg("--resume");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let rows = |dir: &Path| {
        let mut r = saln::export::read::read(&dir.join("export"), false).unwrap();
        r.sort_by_key(|r| (r.superbatch, r.position));
        r
    };
    let whole = t.path().join("whole");
    curate(&yaml(&whole), false);
    let want = rows(&whole);
    assert_eq!(want.len(), 2 * SHARDS * PER);

    let killed = t.path().join("killed");
    let cfg = yaml(&killed);
    // 8 super-batches an epoch, one export write each: the 12th is in epoch 1.
    super::resume::kill_command_at("curate", &cfg, "export", 12);
    curate(&cfg, true);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("report.json")).unwrap()).unwrap();
    let from = report["checkpoints"]["resumed_from_step"].as_u64().unwrap();
    assert!((9..12).contains(&from), "resumed from step {from}");
    assert_eq!(rows(&killed), want);
}
