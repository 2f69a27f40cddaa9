//! Shard lists: expanding what a config names into shards, and reading a shard's bytes from
//! local disk or object storage.
//!
//! An entry of `train:` / `test:` is a local path (relative to the working directory), a
//! glob over local files (`shards/*.tar`; `*`, `?` in the file name), a brace range or list
//! (`shard-{000000..000999}.tar`, `{train,extra}-0.tar`; zero padding is kept) or a URL:
//! `s3://bucket/key`, `gs://bucket/key`, `az://container/key` (also `azure://`, `abfs://`),
//! `http(s)://host/path`, `file:///abs/path`. Braces expand in URLs too; globs do not (an
//! object store has no cheap listing worth depending on here).
//!
//! Object storage goes through the `object_store` crate. Credentials come from the usual
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...) and the
//! `storage:` block ([`StorageConfig`]: `endpoint` for S3-compatible servers, `region`,
//! `allow_http`, `retries`, `timeout_s`). Requests are retried with exponential backoff; a
//! missing object or a denied request is an error naming the URL.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Issues, Result};

/// How to reach object storage (`source.stream.storage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Endpoint of an S3-compatible server (MinIO, moto, R2, ...), e.g.
    /// `http://127.0.0.1:9000`. Default: `$AWS_ENDPOINT_URL`, else AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region. Default: `$AWS_REGION` / `$AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (default: only when the endpoint is `http://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Retries of a failed request, with exponential backoff (default 5).
    #[serde(default = "d_retries")]
    pub retries: usize,
    /// Give up on one request (all its retries) after this many seconds (default 120).
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Further settings of the store, by the `object_store` crate's names (for S3
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`,
    /// `aws_skip_signature`; for GCS `google_service_account`; for Azure
    /// `azure_storage_account_name`, `azure_storage_account_key`, ...). They override the
    /// environment variables of the same meaning.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for StorageConfig {
    /// The defaults of an omitted `storage:` block (the same as its omitted fields).
    fn default() -> Self {
        StorageConfig {
            endpoint: None,
            region: None,
            allow_http: None,
            retries: d_retries(),
            timeout_s: d_timeout(),
            options: Default::default(),
        }
    }
}

fn d_retries() -> usize {
    5
}
fn d_timeout() -> f64 {
    120.0
}

impl StorageConfig {
    /// Adds this block's problems to `v`.
    pub fn validate(&self, v: &mut Issues, key: &str) {
        v.check(
            self.timeout_s.is_finite() && self.timeout_s > 0.0,
            &format!("{key}.timeout_s"),
            || {
                format!(
                    "must be a positive number of seconds, got {}",
                    self.timeout_s
                )
            },
        );
        if let Some(e) = &self.endpoint {
            v.check(
                e.starts_with("http://") || e.starts_with("https://"),
                &format!("{key}.endpoint"),
                || format!("`{e}` is not an http:// or https:// URL"),
            );
        }
    }
}

/// One shard: a local file or an object in a store.
#[derive(Clone)]
pub enum ShardLoc {
    /// A file on this machine.
    Local(PathBuf),
    /// An object: its URL (for messages), the store, the path in it.
    Remote {
        /// The URL as configured.
        url: String,
        /// The store it lives in.
        store: Arc<dyn ObjectStore>,
        /// Its path in the store.
        path: object_store::path::Path,
    },
}

impl std::fmt::Debug for ShardLoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl ShardLoc {
    /// The shard's name in messages and exports: its path or URL.
    pub fn name(&self) -> String {
        match self {
            ShardLoc::Local(p) => p.display().to_string(),
            ShardLoc::Remote { url, .. } => url.clone(),
        }
    }

    /// The folder relative image paths are resolved against (local shards only).
    pub fn folder(&self) -> Option<&Path> {
        match self {
            ShardLoc::Local(p) => p.parent(),
            ShardLoc::Remote { .. } => None,
        }
    }

    /// The whole shard, read into memory (remote shards: one GET, retried).
    pub fn fetch(&self) -> Result<bytes::Bytes> {
        match self {
            ShardLoc::Local(p) => std::fs::read(p)
                .map(bytes::Bytes::from)
                .map_err(|e| Error::io(p, e)),
            ShardLoc::Remote { url, store, path } => {
                let rt = runtime(url)?;
                rt.block_on(async {
                    let got = store.get(path).await.map_err(|e| store_error(url, e))?;
                    got.bytes().await.map_err(|e| store_error(url, e))
                })
            }
        }
    }
}

/// A small runtime for one blocking call into the (async) object store.
fn runtime(url: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::data(url, format!("cannot start an I/O runtime: {e}")))
}

/// An object-store error as a data error naming the URL, worded by kind.
fn store_error(url: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let message = match &e {
        E::NotFound { .. } => "not found (no such object in the store)".to_string(),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            format!("access denied (check the credentials): {e}")
        }
        _ => format!("cannot read from object storage: {e}"),
    };
    Error::data(url, message)
}

/// Expands brace ranges `{000..999}` and lists `{a,b}` (the first group first, left to right).
///
/// ```
/// use saln::source::stream::shards::expand_braces;
/// assert_eq!(
///     expand_braces("s-{08..11}.tar").unwrap(),
///     ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
/// );
/// assert_eq!(expand_braces("{a,b}-{0..1}").unwrap(), ["a-0", "a-1", "b-0", "b-1"]);
/// assert!(expand_braces("s-{3..1}.tar").is_err());
/// ```
pub fn expand_braces(spec: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = spec.find('{') else {
        return Ok(vec![spec.to_string()]);
    };
    let close = spec[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("`{spec}`: `{{` without a closing `}}`"))?;
    let (head, body, tail) = (&spec[..open], &spec[open + 1..close], &spec[close + 1..]);
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi) = (
            a.parse::<u64>()
                .map_err(|_| format!("`{spec}`: `{a}` is not a number"))?,
            b.parse::<u64>()
                .map_err(|_| format!("`{spec}`: `{b}` is not a number"))?,
        );
        if lo > hi {
            return Err(format!("`{spec}`: the range {lo}..{hi} is empty"));
        }
        if hi - lo > 10_000_000 {
            return Err(format!("`{spec}`: the range {lo}..{hi} is too long"));
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for rest in expand_braces(tail)? {
        for i in &items {
            out.push(format!("{head}{i}{rest}"));
        }
    }
    // Sort by the first group: `rest` varies fastest above, so reorder.
    let per = items.len();
    let tails = out.len() / per.max(1);
    let mut ordered = Vec::with_capacity(out.len());
    for i in 0..per {
        for t in 0..tails {
            ordered.push(out[t * per + i].clone());
        }
    }
    Ok(ordered)
}

/// `*` and `?` matching of one file name.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// The shards `specs` name, in order (braces expanded, globs matched in name order).
/// `key` names the config key in messages.
pub fn expand(specs: &[String], storage: &StorageConfig, key: &str) -> Result<Vec<ShardLoc>> {
    let mut out = Vec::new();
    let mut stores: Vec<(String, Arc<dyn ObjectStore>)> = Vec::new();
    for spec in specs {
        let names = expand_braces(spec).map_err(|m| Error::config(key, m))?;
        for name in names {
            if let Some(path) = name.strip_prefix("file://") {
                out.extend(local(path, key)?);
            } else if is_url(&name) {
                let url = url_parts(&name).map_err(|m| Error::config(key, m))?;
                let store = match stores.iter().find(|(b, _)| *b == url.base) {
                    Some((_, s)) => s.clone(),
                    None => {
                        let s = open_store(&url, storage).map_err(|m| Error::config(key, m))?;
                        stores.push((url.base.clone(), s.clone()));
                        s
                    }
                };
                out.push(ShardLoc::Remote {
                    url: name.clone(),
                    store,
                    path: object_store::path::Path::from(url.path.as_str()),
                });
            } else {
                out.extend(local(&name, key)?);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::config(key, "names no shards"));
    }
    Ok(out)
}

/// A local path, or the files a glob in its file name matches.
fn local(path: &str, key: &str) -> Result<Vec<ShardLoc>> {
    let p = PathBuf::from(path);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![ShardLoc::Local(p)]);
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| glob_match(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| e.path())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::config(key, format!("`{path}` matches no files")));
    }
    Ok(found.into_iter().map(ShardLoc::Local).collect())
}

struct UrlParts {
    scheme: String,
    /// `scheme://bucket` (or `scheme://host` for HTTP): one store per base.
    base: String,
    /// The object's path inside the store.
    path: String,
}

fn url_parts(url: &str) -> std::result::Result<UrlParts, String> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || path.is_empty() {
        return Err(format!("`{url}`: expected {scheme}://BUCKET/PATH"));
    }
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
        base: format!("{scheme}://{bucket}"),
        path: path.to_string(),
    })
}

fn open_store(
    url: &UrlParts,
    cfg: &StorageConfig,
) -> std::result::Result<Arc<dyn ObjectStore>, String> {
    use object_store::{BackoffConfig, ClientOptions, RetryConfig};
    // TLS goes through rustls with ring (`reqwest/rustls-no-provider` in Cargo.toml: the
    // default provider, aws-lc, needs a C toolchain build that would also rebuild
    // libtorch's bindings). A provider installed by the embedding program is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: cfg.retries,
        retry_timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.001)),
    };
    let endpoint = cfg
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    let allow_http = cfg.allow_http.unwrap_or_else(|| {
        endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    });
    let client = ClientOptions::new().with_allow_http(allow_http);
    let err = |e: object_store::Error| format!("{}: {e}", url.base);
    let store: Arc<dyn ObjectStore> = match url.scheme.as_str() {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(&url.base)
                .with_retry(retry)
                .with_client_options(client);
            let region = cfg.region.clone().or_else(|| {
                std::env::var("AWS_REGION")
                    .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                    .ok()
            });
            b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
            if let Some(e) = endpoint {
                b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
            }
            for (k, v) in &cfg.options {
                let key = k
                    .parse::<object_store::aws::AmazonS3ConfigKey>()
                    .map_err(|_| format!("storage.options: `{k}` is not an S3 setting"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        "gs" | "gcs" => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&url.base)
                .with_retry(retry)
                .with_client_options(client);
            for (k, v) in &cfg.options {
                let key = k
                    .parse::<object_store::gcp::GoogleConfigKey>()
                    .map_err(|_| format!("storage.options: `{k}` is not a GCS setting"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(&url.base)
                .with_retry(retry)
                .with_client_options(client);
            for (k, v) in &cfg.options {
                let key = k
                    .parse::<object_store::azure::AzureConfigKey>()
                    .map_err(|_| format!("storage.options: `{k}` is not an Azure setting"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(&url.base)
                .with_retry(retry)
                .with_client_options(client.with_allow_http(true))
                .build()
                .map_err(err)?,
        ),
        s => {
            return Err(format!(
                "`{s}://` is not supported (s3, gs, az, http, https, file)"
            ))
        }
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_keep_padding_and_order() {
        assert_eq!(
            expand_braces("d/{0..2}-{a,b}.tar").unwrap(),
            [
                "d/0-a.tar",
                "d/0-b.tar",
                "d/1-a.tar",
                "d/1-b.tar",
                "d/2-a.tar",
                "d/2-b.tar"
            ]
        );
        assert_eq!(
            expand_braces("x-{000009..000010}").unwrap(),
            ["x-000009", "x-000010"]
        );
        assert!(expand_braces("x-{1..").is_err());
    }

    #[test]
    fn globs_match_local_files_in_name_order() {
        let t = tempfile::tempdir().unwrap();
        for n in ["b-1.tar", "a-2.tar", "a-1.tar", "a-1.txt"] {
            std::fs::write(t.path().join(n), b"").unwrap();
        }
        let spec = format!("{}/a-?.tar", t.path().display());
        let got = expand(&[spec], &StorageConfig::default(), "k").unwrap();
        let names: Vec<String> = got.iter().map(|s| s.name()).collect();
        assert!(names[0].ends_with("a-1.tar") && names[1].ends_with("a-2.tar"));
        assert_eq!(names.len(), 2);
        let e = expand(
            &[format!("{}/z*.tar", t.path().display())],
            &StorageConfig::default(),
            "source.stream.train",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("source.stream.train") && e.contains("matches no files"),
            "{e}"
        );
    }

    #[test]
    fn urls_become_remote_shards_and_bad_schemes_are_named() {
        let cfg = StorageConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..StorageConfig::default()
        };
        let got = expand(&["s3://b/p/s-{0..1}.tar".into()], &cfg, "k").unwrap();
        assert_eq!(got[1].name(), "s3://b/p/s-1.tar");
        let e = expand(&["ftp://h/x.tar".into()], &cfg, "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp://") && e.contains("not supported"), "{e}");
    }
}
