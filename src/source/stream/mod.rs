//! Streaming sources: data sets larger than memory, read shard by shard in order.
//!
//! | file | what |
//! |---|---|
//! | [`shards`] | the shard list (paths, globs, brace ranges, URLs) and reading a shard from disk or object storage |
//! | [`webdataset`] | WebDataset tar shards (gzip too): files sharing a key are one sample |
//! | [`parquet_stream`] | Parquet shards, row group by row group |
//! | [`shuffle`] | shard order per `(seed, epoch)`, the split over ranks, the shuffle buffer |
//! | [`write`] | an indexed source written as shards (`saln-pipe shard`) |
//!
//! A [`StreamSource`] is opened once: it counts the samples of every shard (a tar is read
//! through once, keeping each sample's key and label; a local Parquet shard only has its
//! label column read; a remote shard is downloaded for it) and finds the number of classes.
//! What it keeps is small: the shard list, the counts and the keys. It has no random access;
//! the loader reads it with [`StreamSource::reader`]:
//!
//! 1. the shards are put in an order drawn from `(seed, epoch)` ([`shuffle::shard_order`]);
//!    rank `r` of `w` reads shards `r, r + w, ...` of it;
//! 2. a prefetch thread fetches the next `prefetch` shards (remote ones into memory) while a
//!    reader thread parses the current one into records of encoded bytes;
//! 3. a shuffle buffer of `shuffle_buffer` records, seeded from `(seed, epoch, rank)`, mixes
//!    them; the loader cuts the stream into super-batches and its decode workers decode them.
//!
//! Every rank reads the same number of samples per epoch, `total / world_size` (`uneven:
//! drop`) or its ceiling (`pad`): a rank whose shards hold fewer samples in an epoch reads
//! its first shards again, one with more leaves its last samples of that epoch unread. With
//! shards of equal size that divide among the ranks, every sample is read once per epoch.
//!
//! A sample's id is its position in the whole list (the shard's first sample's position plus
//! its place in the shard): stable while the shard list is. Its name in messages and exports
//! is `shard#key` (the tar key, or the Parquet row).
//!
//! Where a rank's stream stands is a [`StreamPosition`] `(epoch, shard, offset)`; a reader
//! can start from one (it reads the epoch's shards up to that point again without decoding
//! the images), which is what resuming a run needs.
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{decode, Sample, Source, SourceShape};
use crate::error::{Error, Issues, Result};
use crate::pixel::Size;
use crate::source::{Limits, OnError};

pub mod parquet_stream;
pub mod shards;
pub mod shuffle;
pub mod webdataset;
pub mod write;

pub use shards::{ShardLoc, StorageConfig};

/// The shard format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// WebDataset tar shards (plain or gzip).
    Webdataset,
    /// Parquet shards, read row group by row group.
    Parquet,
}

/// One shard spec or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardList {
    /// One entry (which may hold a glob or a brace range).
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl ShardList {
    /// The entries.
    pub fn specs(&self) -> Vec<String> {
        match self {
            ShardList::One(s) => vec![s.clone()],
            ShardList::Many(v) => v.clone(),
        }
    }
}

/// A streaming data set (`source.stream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// `webdataset` or `parquet`.
    pub format: StreamFormat,
    /// The training shards: paths, globs, brace ranges or URLs (one or a list).
    pub train: ShardList,
    /// The test shards. They are read once into memory (encoded), so keep the test set small.
    pub test: ShardList,
    /// Samples in the shuffle buffer (0: read in shard order).
    #[serde(default = "d_buffer")]
    pub shuffle_buffer: usize,
    /// Shards fetched ahead of the one being read.
    #[serde(default = "d_prefetch")]
    pub prefetch: usize,
    /// WebDataset: image extensions, in order of preference.
    #[serde(default = "d_image_ext")]
    pub image_extensions: Vec<String>,
    /// WebDataset: label extensions, in order of preference (`cls`: a number as text;
    /// `json`: a number, or an object with a `json_label` field).
    #[serde(default = "d_label_ext")]
    pub label_extensions: Vec<String>,
    /// WebDataset: the field of a `.json` label object that holds the class index.
    #[serde(default = "d_json_label")]
    pub json_label: String,
    /// Parquet: the image column (an `Image` struct `{bytes, path}` or binary).
    #[serde(default = "d_image_col")]
    pub image_column: String,
    /// Parquet: the label column (integer class indices).
    #[serde(default = "d_label_col")]
    pub label_column: String,
    /// Object storage: endpoint, region, retries.
    #[serde(default)]
    pub storage: StorageConfig,
}

fn d_buffer() -> usize {
    1000
}
fn d_prefetch() -> usize {
    2
}
fn d_image_ext() -> Vec<String> {
    vec!["jpg".into(), "jpeg".into(), "png".into()]
}
fn d_label_ext() -> Vec<String> {
    vec!["cls".into(), "json".into()]
}
fn d_json_label() -> String {
    "label".into()
}
fn d_image_col() -> String {
    "image".into()
}
fn d_label_col() -> String {
    "label".into()
}

impl StreamConfig {
    /// A config for `format` shards `train` / `test` with every other setting at its default.
    pub fn new(format: StreamFormat, train: Vec<String>, test: Vec<String>) -> StreamConfig {
        StreamConfig {
            format,
            train: ShardList::Many(train),
            test: ShardList::Many(test),
            shuffle_buffer: d_buffer(),
            prefetch: d_prefetch(),
            image_extensions: d_image_ext(),
            label_extensions: d_label_ext(),
            json_label: d_json_label(),
            image_column: d_image_col(),
            label_column: d_label_col(),
            storage: StorageConfig::default(),
        }
    }

    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        for (key, list) in [("train", &self.train), ("test", &self.test)] {
            let specs = list.specs();
            v.check(
                !specs.is_empty() && specs.iter().all(|s| !s.is_empty()),
                &format!("source.stream.{key}"),
                || "give at least one shard (a path, glob, brace range or URL)".into(),
            );
            for s in &specs {
                if let Err(m) = shards::expand_braces(s) {
                    v.at(&format!("source.stream.{key}"), m);
                }
            }
        }
        if self.format == StreamFormat::Webdataset {
            v.check(
                !self.image_extensions.is_empty(),
                "source.stream.image_extensions",
                || "must name at least one extension".into(),
            );
            v.check(
                !self.label_extensions.is_empty(),
                "source.stream.label_extensions",
                || "must name at least one extension".into(),
            );
        }
        v.check(self.prefetch > 0, "source.stream.prefetch", || {
            "must be at least 1".into()
        });
        self.storage.validate(v, "source.stream.storage");
    }

    fn layout(&self, limits: &Limits) -> Layout {
        match self.format {
            StreamFormat::Webdataset => Layout::Tar(webdataset::TarLayout {
                image_extensions: lower(&self.image_extensions),
                label_extensions: lower(&self.label_extensions),
                json_label: self.json_label.clone(),
                max_entry_bytes: limits.max_tar_entry_bytes,
            }),
            StreamFormat::Parquet => Layout::Parquet(parquet_stream::ParquetLayout {
                image_column: self.image_column.clone(),
                label_column: self.label_column.clone(),
            }),
        }
    }
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter()
        .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
        .collect()
}

#[derive(Debug, Clone)]
enum Layout {
    Tar(webdataset::TarLayout),
    Parquet(parquet_stream::ParquetLayout),
}

/// A sample's image as read from a shard, not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Encoded JPEG/PNG bytes.
    Bytes(Vec<u8>),
    /// An image file to read (a `datasets` `Image` with null bytes and a path).
    File(PathBuf),
    /// No image: why.
    Missing(String),
}

/// One sample as a shard yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Its key in the shard (the tar key, or the Parquet row number).
    pub key: String,
    /// Its class index, or why there is none.
    pub label: std::result::Result<i64, String>,
    /// Its image.
    pub image: Payload,
}

/// One sample of the stream, with where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Stable id: position in the whole shard list.
    pub id: u64,
    /// The shard (index in the list).
    pub shard: usize,
    /// The sample as read.
    pub raw: RawRecord,
}

/// Where a rank's stream stands: in `epoch`, `offset` samples have been taken (skipped
/// ones included), while reading the `shard`-th shard of the rank's order for that epoch.
/// [`StreamSource::reader`] starts from one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Position in the rank's shard order of the epoch (0-based) of the shard being read.
    /// A reader started from a position checks it when it is not 0 (a guard against a
    /// changed shard list; 0 means "not known").
    pub shard: usize,
    /// Samples of the epoch already taken.
    pub offset: u64,
}

/// Per-shard facts found at open.
#[derive(Debug, Default)]
struct Catalog {
    shards: Vec<ShardLoc>,
    /// First sample id of each shard, and the total at the end.
    starts: Vec<u64>,
    /// WebDataset keys of each shard (Parquet rows need none: the key is the row).
    keys: Vec<Option<Keys>>,
    /// Damage found (`on_error: skip`): `shard: what`.
    problems: Vec<String>,
    max_label: i64,
}

/// A shard's keys in one string.
#[derive(Debug, Default)]
struct Keys {
    text: String,
    ends: Vec<u32>,
}

impl Keys {
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..end)
    }
}

impl Catalog {
    fn size(&self, shard: usize) -> u64 {
        self.starts[shard + 1] - self.starts[shard]
    }

    fn total(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    fn key(&self, shard: usize, pos: u64) -> String {
        self.keys[shard]
            .as_ref()
            .and_then(|k| k.get(pos as usize))
            .map(str::to_string)
            .unwrap_or_else(|| pos.to_string())
    }

    fn locate(&self, id: u64) -> String {
        let s = self.starts.partition_point(|&x| x <= id).saturating_sub(1);
        match self.shards.get(s) {
            Some(loc) if id < self.total() => {
                format!("{}#{}", loc.name(), self.key(s, id - self.starts[s]))
            }
            _ => format!("#{id}"),
        }
    }
}

/// A shard's bytes, ready to parse.
enum ShardData {
    Local(PathBuf),
    Memory(bytes::Bytes),
}

fn fetch(loc: &ShardLoc) -> Result<ShardData> {
    match loc {
        ShardLoc::Local(p) => {
            if p.is_file() {
                Ok(ShardData::Local(p.clone()))
            } else {
                Err(Error::data(p, "not found (no such shard file)"))
            }
        }
        remote => remote.fetch().map(ShardData::Memory),
    }
}

/// Parses `data` with `layout`, calling `f` per sample until it returns false. `Err` is
/// damage, after the samples before it.
fn parse(
    data: ShardData,
    loc: &ShardLoc,
    layout: &Layout,
    labels_only: bool,
    f: impl FnMut(RawRecord) -> bool,
) -> std::result::Result<(), String> {
    let run = std::panic::AssertUnwindSafe(move || match (data, layout) {
        (ShardData::Local(p), Layout::Tar(l)) => {
            let file = std::fs::File::open(&p).map_err(|e| format!("cannot open: {e}"))?;
            webdataset::for_each_sample(file, l, f)
        }
        (ShardData::Memory(b), Layout::Tar(l)) => webdataset::for_each_sample(&b[..], l, f),
        (ShardData::Local(p), Layout::Parquet(l)) => {
            let file = std::fs::File::open(&p).map_err(|e| format!("cannot open: {e}"))?;
            parquet_stream::for_each_row(file, l, loc.folder(), labels_only, f)
        }
        (ShardData::Memory(b), Layout::Parquet(l)) => {
            parquet_stream::for_each_row(b, l, loc.folder(), labels_only, f)
        }
    });
    std::panic::catch_unwind(run).unwrap_or_else(|p| {
        Err(format!(
            "the reader panicked (corrupt shard?): {}",
            crate::stage::panic_message(&*p)
        ))
    })
}

/// Counts one shard: `(keys, max label, samples, damage)`.
fn count_shard(loc: &ShardLoc, layout: &Layout) -> Result<Counted> {
    let data = fetch(loc)?;
    let mut keys = Keys::default();
    let (mut n, mut max) = (0u64, -1i64);
    let tar = matches!(layout, Layout::Tar(_));
    let r = parse(data, loc, layout, true, |rec| {
        n += 1;
        if let Ok(l) = rec.label {
            max = max.max(l);
        }
        if tar {
            keys.text.push_str(&rec.key);
            keys.ends.push(keys.text.len() as u32);
        }
        true
    });
    Ok((tar.then_some(keys), max, n, r.err()))
}

/// What counting a shard finds: its keys (tar shards), largest label, number of samples,
/// and the damage that ended it early.
type Counted = (Option<Keys>, i64, u64, Option<String>);

/// Reads the catalog of `shards`: counts every shard, on up to 8 threads.
fn catalog(shards: Vec<ShardLoc>, layout: &Layout, on_error: OnError) -> Result<Catalog> {
    let threads = shards.len().clamp(1, 8);
    let results: Vec<Result<Counted>> = {
        let chunks: Vec<Vec<(usize, &ShardLoc)>> = (0..threads)
            .map(|t| shards.iter().enumerate().skip(t).step_by(threads).collect())
            .collect();
        let mut out: Vec<Option<Result<_>>> = (0..shards.len()).map(|_| None).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .into_iter()
                            .map(|(i, loc)| (i, count_shard(loc, layout)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                if let Ok(v) = h.join() {
                    for (i, r) in v {
                        out[i] = Some(r);
                    }
                }
            }
        });
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::data("<shards>", "a counting thread panicked")))
            })
            .collect()
    };
    let mut cat = Catalog {
        starts: vec![0],
        max_label: -1,
        ..Catalog::default()
    };
    for (loc, r) in shards.into_iter().zip(results) {
        let (keys, max, n, damage) = match r {
            Ok(x) => x,
            Err(e) if on_error == OnError::Skip => {
                cat.problems.push(e.to_string());
                (None, -1, 0, None)
            }
            Err(e) => return Err(e),
        };
        if let Some(d) = damage {
            if on_error == OnError::Fail {
                return Err(Error::data(loc.name(), d));
            }
            cat.problems.push(format!(
                "{}: {d} (the {n} samples before it are used)",
                loc.name()
            ));
        }
        cat.max_label = cat.max_label.max(max);
        cat.keys.push(keys);
        cat.starts.push(cat.starts.last().copied().unwrap_or(0) + n);
        cat.shards.push(loc);
    }
    Ok(cat)
}

struct Inner {
    cat: Catalog,
    layout: Layout,
    channels: usize,
    max_pixels: u64,
    classes: usize,
    shuffle_buffer: usize,
    prefetch: usize,
}

/// A streaming training set: shards read in order, no random access (see the module doc).
#[derive(Clone)]
pub struct StreamSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSource")
            .field("shards", &self.inner.cat.shards.len())
            .field("samples", &self.inner.cat.total())
            .finish()
    }
}

/// Opens the training stream and reads the test shards into memory.
pub fn open_pair(
    cfg: &StreamConfig,
    channels: usize,
    on_error: OnError,
    limits: &Limits,
) -> Result<(StreamSource, EncodedSource)> {
    let layout = cfg.layout(limits);
    let train = shards::expand(&cfg.train.specs(), &cfg.storage, "source.stream.train")?;
    let test = shards::expand(&cfg.test.specs(), &cfg.storage, "source.stream.test")?;
    let cat = catalog(train, &layout, on_error)?;
    if cat.total() == 0 {
        return Err(Error::data(
            cat.shards.first().map(|s| s.name()).unwrap_or_default(),
            format!(
                "the training shards hold no readable samples{}",
                match cat.problems.first() {
                    Some(p) => format!(" ({p})"),
                    None => String::new(),
                }
            ),
        ));
    }
    let test = EncodedSource::read(test, &layout, channels, on_error, limits.max_pixels)?;
    let classes = (cat.max_label.max(test.max_label) + 1).max(1) as usize;
    limits.check_labels(classes, &cat.shards[0].name())?;
    let test = EncodedSource { classes, ..test };
    let train = StreamSource {
        inner: Arc::new(Inner {
            cat,
            layout,
            channels,
            max_pixels: limits.max_pixels,
            classes,
            shuffle_buffer: cfg.shuffle_buffer,
            prefetch: cfg.prefetch,
        }),
    };
    Ok((train, test))
}

impl StreamSource {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.cat.shards.len()
    }

    /// Damage found when the shards were counted (`on_error: skip`), one line each.
    pub fn problems(&self) -> &[String] {
        &self.inner.cat.problems
    }

    /// The rank's stream for `from.epoch`, `take` samples long, starting at `from` (use
    /// `StreamPosition { epoch, ..Default::default() }` for the epoch's start). The shard
    /// order and the shuffle buffer are drawn from `seed`; rank `rank` of `world_size` reads
    /// every `world_size`-th shard of the order.
    pub fn reader(
        &self,
        seed: u64,
        rank: usize,
        world_size: usize,
        take: u64,
        from: StreamPosition,
    ) -> Result<StreamReader> {
        StreamReader::start(self.clone(), seed, rank, world_size, take, from)
    }

    /// Decodes `record` to this source's channel count (resized to `size` when given).
    pub fn decode(&self, record: &Record, size: Option<Size>) -> Result<Sample> {
        let err = |message: String| Error::Sample {
            sample: self.locate(record.id as usize),
            message,
        };
        let label = record.raw.label.clone().map_err(err)?;
        let file;
        let bytes = match &record.raw.image {
            Payload::Bytes(b) => &b[..],
            Payload::File(p) => {
                file = std::fs::read(p).map_err(|e| {
                    err(format!(
                        "the image bytes are null and its file `{}` cannot be read: {e}",
                        p.display()
                    ))
                })?;
                &file[..]
            }
            Payload::Missing(m) => return Err(err(m.clone())),
        };
        let image = decode::decode_limited(bytes, self.inner.channels, size, self.inner.max_pixels)
            .map_err(err)?;
        Ok(Sample {
            id: record.id,
            label,
            image,
        })
    }
}

impl Source for StreamSource {
    fn len(&self) -> usize {
        self.inner.cat.total() as usize
    }
    fn get(&self, index: usize) -> Result<Sample> {
        Err(Error::Sample {
            sample: self.locate(index),
            message: "a streaming source has no random access: it is read in order by the \
                      loader (pretraining a reference model and `viz` need an indexed source)"
                .into(),
        })
    }
    fn locate(&self, index: usize) -> String {
        self.inner.cat.locate(index as u64)
    }
    fn num_classes(&self) -> usize {
        self.inner.classes
    }
    fn shape(&self) -> SourceShape {
        SourceShape::variable(self.inner.channels)
    }
    fn as_stream(&self) -> Option<&StreamSource> {
        Some(self)
    }
}

/// A rank's stream of one epoch (see [`StreamSource::reader`]). Yields records in the
/// shuffled order; an error ends it.
pub struct StreamReader {
    records: crossbeam_channel::Receiver<(usize, Result<Record>)>,
    buffer: shuffle::ShuffleBuffer<(usize, Record)>,
    position: StreamPosition,
    take: u64,
    input_done: bool,
    /// The shard list position of the last record put in the buffer.
    reading: usize,
}

impl StreamReader {
    fn start(
        src: StreamSource,
        seed: u64,
        rank: usize,
        world_size: usize,
        take: u64,
        from: StreamPosition,
    ) -> Result<StreamReader> {
        let cat = &src.inner.cat;
        let n = cat.shards.len();
        if n < world_size {
            return Err(Error::config(
                "superbatch.shard.world_size",
                format!(
                    "{n} training shards cannot be split over {world_size} ranks: every rank \
                     reads whole shards (write more, smaller shards)"
                ),
            ));
        }
        let epoch = from.epoch;
        let mine = shuffle::rank_shards(&shuffle::shard_order(n, seed, epoch), rank, world_size);
        if take > 0 && mine.iter().all(|&s| cat.size(s) == 0) {
            return Err(Error::data(
                cat.shards[mine[0]].name(),
                format!("rank {rank}'s shards of epoch {epoch} hold no readable samples"),
            ));
        }
        let (fetch_tx, fetch_rx) =
            crossbeam_channel::bounded::<(usize, usize, Result<ShardData>)>(src.inner.prefetch);
        let (rec_tx, rec_rx) = crossbeam_channel::bounded::<(usize, Result<Record>)>(256);
        {
            let (src, mine) = (src.clone(), mine.clone());
            std::thread::Builder::new()
                .name("saln-shard-fetch".into())
                .spawn(move || {
                    // Cycles through the rank's shards (a short rank reads its first ones
                    // again); ends when the reader goes away.
                    if mine.iter().all(|&s| src.inner.cat.size(s) == 0) {
                        return;
                    }
                    for pos in 0.. {
                        let shard = mine[pos % mine.len()];
                        if src.inner.cat.size(shard) == 0 {
                            continue;
                        }
                        let data = fetch(&src.inner.cat.shards[shard]);
                        if fetch_tx.send((pos, shard, data)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::io("<thread>", e))?;
        }
        {
            let src = src.clone();
            std::thread::Builder::new()
                .name("saln-shard-read".into())
                .spawn(move || {
                    let cat = &src.inner.cat;
                    // Exactly `take` records are sent: every sample of the rank's shards
                    // once, then (a short rank) its first ones again. Records past `take`
                    // are not sent, so that none of them mixes into the shuffle buffer
                    // while the epoch's own samples are still in it.
                    let mut sent = 0u64;
                    if take == 0 {
                        return;
                    }
                    for (pos, shard, data) in fetch_rx {
                        let loc = &cat.shards[shard];
                        let data = match data {
                            Ok(d) => d,
                            Err(e) => {
                                let _ = rec_tx.send((pos, Err(e)));
                                return;
                            }
                        };
                        let size = cat.size(shard);
                        let mut n = 0u64;
                        let mut gone = false;
                        let r = parse(data, loc, &src.inner.layout, false, |raw| {
                            let id = cat.starts[shard] + n;
                            n += 1;
                            let rec = Record { id, shard, raw };
                            if rec_tx.send((pos, Ok(rec))).is_err() {
                                gone = true;
                            }
                            sent += 1;
                            !gone && n < size && sent < take
                        });
                        if gone || sent >= take {
                            return;
                        }
                        if n < size {
                            let why = r.err().unwrap_or_else(|| "it ended early".into());
                            let _ = rec_tx.send((
                                pos,
                                Err(Error::data(
                                    loc.name(),
                                    format!(
                                        "changed since it was opened: {n} of {size} samples \
                                         read, then {why}"
                                    ),
                                )),
                            ));
                            return;
                        }
                    }
                })
                .map_err(|e| Error::io("<thread>", e))?;
        }
        let mut reader = StreamReader {
            records: rec_rx,
            buffer: shuffle::ShuffleBuffer::new(src.inner.shuffle_buffer, seed, epoch, rank),
            position: StreamPosition {
                epoch,
                shard: 0,
                offset: 0,
            },
            take,
            input_done: false,
            reading: 0,
        };
        // Fast-forward to `from`: the records are read again but not decoded.
        while reader.position.offset < from.offset.min(take) {
            match reader.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        // `shard` is checked only when given (a loader resumed from `(epoch, superbatch)`
        // knows the offset, not the shard).
        let at = reader.position;
        if from.offset > 0
            && (at.offset != from.offset || (from.shard > 0 && at.shard != from.shard))
        {
            return Err(Error::data(
                "<stream>",
                format!(
                    "cannot resume at {from:?}: the stream is at {:?} there (did the shard \
                     list, the seed or the world size change?)",
                    reader.position
                ),
            ));
        }
        Ok(reader)
    }

    /// Where the stream stands: the next record is the `offset`-th of the epoch.
    pub fn position(&self) -> StreamPosition {
        self.position
    }
}

impl Iterator for StreamReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.position.offset >= self.take {
            return None;
        }
        let out = loop {
            if self.input_done {
                break self.buffer.pop();
            }
            match self.records.recv() {
                Ok((pos, Ok(rec))) => {
                    self.reading = pos;
                    if let Some(x) = self.buffer.push((pos, rec)) {
                        break Some(x);
                    }
                }
                Ok((_, Err(e))) => {
                    self.take = 0;
                    return Some(Err(e));
                }
                Err(_) => self.input_done = true,
            }
        };
        let (_, rec) = out?;
        self.position.offset += 1;
        self.position.shard = self.reading;
        Some(Ok(rec))
    }
}

/// Samples held in memory as encoded bytes (a stream's test shards), decoded on `get`.
pub struct EncodedSource {
    records: Vec<(String, RawRecord)>,
    channels: usize,
    max_pixels: u64,
    classes: usize,
    max_label: i64,
}

impl EncodedSource {
    /// Reads every sample of `shards`, in order. Damage is handled as for training shards.
    fn read(
        shards: Vec<ShardLoc>,
        layout: &Layout,
        channels: usize,
        on_error: OnError,
        max_pixels: u64,
    ) -> Result<EncodedSource> {
        let mut records = Vec::new();
        let mut max_label = -1i64;
        for loc in shards {
            let data = match fetch(&loc) {
                Ok(d) => d,
                Err(_) if on_error == OnError::Skip => continue,
                Err(e) => return Err(e),
            };
            let name = loc.name();
            let r = parse(data, &loc, layout, false, |raw| {
                if let Ok(l) = raw.label {
                    max_label = max_label.max(l);
                }
                records.push((format!("{name}#{}", raw.key), raw));
                true
            });
            if let (Err(d), OnError::Fail) = (r, on_error) {
                return Err(Error::data(&name, d));
            }
        }
        Ok(EncodedSource {
            records,
            channels,
            max_pixels,
            classes: (max_label + 1).max(1) as usize,
            max_label,
        })
    }
}

impl Source for EncodedSource {
    fn len(&self) -> usize {
        self.records.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.get_resized_opt(index, None)
    }
    fn get_resized(&self, index: usize, size: Size) -> Result<Sample> {
        self.get_resized_opt(index, Some(size))
    }
    fn locate(&self, index: usize) -> String {
        self.records
            .get(index)
            .map(|r| r.0.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn shape(&self) -> SourceShape {
        SourceShape::variable(self.channels)
    }
}

impl EncodedSource {
    fn get_resized_opt(&self, index: usize, size: Option<Size>) -> Result<Sample> {
        let (name, raw) = self.records.get(index).ok_or_else(|| Error::Sample {
            sample: format!("#{index}"),
            message: "index out of range".into(),
        })?;
        let err = |message: String| Error::Sample {
            sample: name.clone(),
            message,
        };
        let label = raw.label.clone().map_err(err)?;
        let bytes = match &raw.image {
            Payload::Bytes(b) => b.clone(),
            Payload::File(p) => {
                std::fs::read(p).map_err(|e| err(format!("cannot read `{}`: {e}", p.display())))?
            }
            Payload::Missing(m) => return Err(err(m.clone())),
        };
        let image =
            decode::decode_limited(&bytes, self.channels, size, self.max_pixels).map_err(err)?;
        Ok(Sample {
            id: index as u64,
            label,
            image,
        })
    }
}
