//! The library's error type. Every variant names what failed: the file, the sample, the
//! super-batch, the config key or the stage. The binary turns these into messages and exit
//! codes; the library never prints them itself.
use std::path::PathBuf;

/// A `Result` with saln's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found in a pipeline configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the key, for example `selection.keep_ratio`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
    /// 1-based line of the key in the YAML, when it is written there (not for defaults).
    pub line: Option<usize>,
    /// 1-based column, when the parser pointed at one (unknown keys and values, wrong types).
    pub column: Option<usize>,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => {
                write!(f, "{} (line {l}, column {c}): {}", self.key, self.message)
            }
            (Some(l), None) => write!(f, "{} (line {l}): {}", self.key, self.message),
            _ => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Collects configuration problems; each section's `validate` adds to it.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    /// Records a problem with `key` (a dotted path).
    pub fn at(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            line: None,
            column: None,
        })
    }

    /// Records `message` under `key` when `ok` is false.
    pub fn check(&mut self, ok: bool, key: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.at(key, message())
        }
    }
}

/// A sample of a super-batch that selection cannot use (a zero or non-finite feature vector,
/// a non-finite loss), named by its position in the super-batch. The position travels as a
/// value, so the stage that knows the super-batch's ids can name the sample's id
/// ([`Error::BadSample`]) without reading it back out of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFault {
    /// 0-based position in the super-batch.
    pub position: usize,
    /// What of the sample is at fault: `feature vector`, `loss`.
    pub what: &'static str,
    /// What is wrong with it: `is all zeros`, `under the learner is not finite (NaN)`.
    pub problem: String,
}

impl std::fmt::Display for SampleFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of sample {} {}",
            self.what, self.position, self.problem
        )
    }
}

impl SampleFault {
    /// The same fault, described with the sample's stable `id` when it is known.
    fn describe(&self, id: Option<u64>) -> String {
        match id {
            Some(id) => format!(
                "{} of sample id {id} (position {}) {}",
                self.what, self.position, self.problem
            ),
            None => self.to_string(),
        }
    }
}

/// Everything that can go wrong in saln.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The YAML could not be parsed (syntax, unknown key, wrong type); the message carries
    /// the line and column.
    #[error("{path}: {message}")]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with location.
        message: String,
    },
    /// The YAML parsed but some values are invalid. Holds *all* the problems found.
    #[error("{path}: invalid configuration:\n{}", .issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    ConfigInvalid {
        /// The config file (or `<inline>`).
        path: PathBuf,
        /// Every problem, in key order.
        issues: Vec<ConfigIssue>,
    },
    /// A data file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One sample could not be used.
    #[error("sample {sample}: {message}")]
    Sample {
        /// Where the sample comes from, for example `train-images-idx3-ubyte.gz#1234`.
        sample: String,
        /// What is wrong.
        message: String,
    },
    /// A feature vector was zero or not finite, or the selector met a degenerate input.
    #[error("selection, super-batch {superbatch}: {message}")]
    Selection {
        /// Global index of the super-batch.
        superbatch: u64,
        /// What is wrong (names the sample where one is at fault).
        message: String,
    },
    /// Selection met a sample it cannot use (see [`SampleFault`]).
    #[error("selection, super-batch {superbatch}: {}", .fault.describe(*.id))]
    BadSample {
        /// Global index of the super-batch.
        superbatch: u64,
        /// The sample's stable id, once the stage that knows the super-batch's ids added it.
        id: Option<u64>,
        /// Which sample (by position) and what is wrong.
        fault: SampleFault,
    },
    /// A model file could not be loaded or does not match the architecture.
    #[error("model {path}: {message}")]
    Model {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An error inside a pipeline stage; `stage` is the stage's name.
    #[error("{stage} stage: {source}")]
    Stage {
        /// `loader`, `extract` or `train`.
        stage: &'static str,
        /// The underlying error.
        #[source]
        source: Box<Error>,
    },
    /// A stage panicked (a bug); the pipeline turned it into this error instead of aborting.
    #[error("{stage} stage panicked: {message}")]
    Panic {
        /// The stage's name.
        stage: &'static str,
        /// The panic payload.
        message: String,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A training loop handed back losses that cannot be used (wrong count, not finite).
    #[error("loss feedback: {message}")]
    Feedback {
        /// What is wrong (names the sample where one is at fault).
        message: String,
    },
    /// The run was cancelled (Ctrl-C, SIGTERM, or the consumer went away).
    #[error("cancelled")]
    Cancelled,
    /// An output (table, plot, picture) could not be made, or what it needs (a font) is
    /// missing.
    #[error("{path}: {message}")]
    Output {
        /// The file being written, or the one that is missing.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// For an [`Error::BadSample`] without an id, the same error naming the sample's id:
    /// `ids[position]` of the super-batch it came from. Other errors are returned unchanged.
    pub fn with_sample_ids(self, ids: &[u64]) -> Error {
        match self {
            Error::BadSample {
                superbatch,
                id: None,
                fault,
            } => Error::BadSample {
                superbatch,
                id: ids.get(fault.position).copied(),
                fault,
            },
            e => e,
        }
    }

    /// Wraps `self` as an error of stage `stage` (idempotent for the same stage).
    pub fn in_stage(self, stage: &'static str) -> Error {
        match self {
            e @ (Error::Stage { .. } | Error::Panic { .. } | Error::Cancelled) => e,
            e => Error::Stage {
                stage,
                source: Box::new(e),
            },
        }
    }

    /// An [`Error::ConfigInvalid`] with one problem at `key`, found at run time (after
    /// parsing: for example a hold-out larger than the data set).
    pub fn config(key: &str, message: impl Into<String>) -> Error {
        Error::ConfigInvalid {
            path: PathBuf::from("<config>"),
            issues: vec![ConfigIssue {
                key: key.into(),
                message: message.into(),
                line: None,
                column: None,
            }],
        }
    }

    /// An [`Error::Data`]: the file at `path` is missing, unreadable or malformed.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
