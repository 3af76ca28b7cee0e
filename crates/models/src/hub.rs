//! Hugging Face hub downloads into the HF cache layout, so a cache filled by Python's `huggingface_hub` is
//! reused here and the other way round:
//!
//! ```text
//! {cache}/models--{org}--{name}/blobs/{etag}                       file contents, named by the server's ETag
//!                               snapshots/{commit}/{file}          symlink to ../../blobs/{etag} (a copy where
//!                                                                  symlinks fail)
//!                               refs/{revision}                    the commit a branch or tag pointed at
//! ```
//!
//! Cache: `HubOptions::cache_dir` (LLaMA-Factory's `cache_dir`), else `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`. Endpoint: `$HF_ENDPOINT`, else <https://huggingface.co>.
//!
//! Protocol (what `huggingface_hub` does): the file list and commit come from
//! `GET {endpoint}/api/models/{repo}/revision/{revision}`; each file's ETag and size from a `HEAD` on
//! `{endpoint}/{repo}/resolve/{commit}/{file}` without following redirects (LFS files answer 302 with
//! `X-Linked-Etag` / `X-Linked-Size` and a CDN `Location`), then the bytes from a `GET` into
//! `blobs/{etag}.incomplete`, resumed with `Range: bytes=N-` when a previous download stopped part way.
//!
//! A snapshot that already holds a complete model is used without touching the network; pass an explicit
//! `revision` (or delete `refs/{revision}`) to pick up a newer upstream commit.

use crate::{bail, Error, Result};
use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// Base URL, no trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The cache root; `None` resolves `HF_HUB_CACHE` / `HF_HOME` / `~/.cache/huggingface/hub` at use time.
    pub cache_dir: Option<PathBuf>,
    /// Bearer token for gated and private repos (`HF_TOKEN`).
    pub token: Option<String>,
    /// Branch, tag or commit (default "main").
    pub revision: String,
    /// Never touch the network; only the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl Default for HubOptions {
    fn default() -> HubOptions {
        HubOptions { endpoint: DEFAULT_ENDPOINT.into(), cache_dir: None, token: None, revision: "main".into(), offline: false }
    }
}

impl HubOptions {
    /// Options from the environment, as `huggingface_hub` reads it.
    pub fn from_env() -> HubOptions {
        HubOptions::from_env_vars(|key| std::env::var(key).ok())
    }

    /// [`HubOptions::from_env`] with the variables supplied by `var` (so it can be tested without touching the
    /// process environment). The token falls back to the file `huggingface-cli login` writes
    /// (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`).
    pub fn from_env_vars(var: impl Fn(&str) -> Option<String>) -> HubOptions {
        let set = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        let endpoint = set("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string();
        let offline = set("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"));
        let token = set("HF_TOKEN").or_else(|| set("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = set("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| hf_home(&var).map(|h| h.join("token")))?;
            fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let cache_dir = set("HF_HUB_CACHE").map(PathBuf::from).or_else(|| hf_home(&var).map(|h| h.join("hub")));
        HubOptions { endpoint, cache_dir, token, revision: "main".into(), offline }
    }

    /// The cache root these options use.
    pub fn resolved_cache_dir(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        HubOptions::from_env().cache_dir.ok_or_else(|| {
            Error::msg("cannot find the hub cache: set HF_HUB_CACHE or HF_HOME (neither is set and HOME is unknown)")
        })
    }
}

fn hf_home(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |key: &str| var(key).filter(|v| !v.trim().is_empty());
    set("HF_HOME").map(PathBuf::from).or_else(|| {
        let cache = set("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("huggingface"))
    })
}

/// `org/name`: exactly two non-empty parts of letters, digits, `-`, `_`, `.` (no `..`, not starting with `.`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| is_repo_part(p))
}

fn is_repo_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && !p.starts_with('.')
        && !p.contains("..")
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `org/name/dir/file.gguf` -> (`org/name`, `dir/file.gguf`): a hub id naming one file in the repo.
pub fn split_repo_file(s: &str) -> Option<(&str, &str)> {
    let mut it = s.splitn(3, '/');
    let (org, name, file) = (it.next()?, it.next()?, it.next()?);
    if !is_repo_part(org) || !is_repo_part(name) || !is_safe_repo_path(file) {
        return None;
    }
    Some((&s[..org.len() + 1 + name.len()], file))
}

/// A relative path inside a repo that cannot climb out of the snapshot folder.
fn is_safe_repo_path(file: &str) -> bool {
    !file.is_empty() && !file.starts_with('/') && !file.contains('\\') && file.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `{cache}/models--{org}--{name}`.
pub fn repo_cache_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The files a model load needs from a repo's file list: config, generation config, tokenizer files, chat
/// template, and the safetensors weights (the shards an index names, else `model.safetensors`, else every
/// top-level `.safetensors`). Never `.bin` / `.pth` / `.onnx` / `.gguf`, nor anything in subfolders.
pub fn model_files(siblings: &[String]) -> Vec<String> {
    let top_level = |f: &&String| !f.contains('/');
    let is_meta = |f: &str| {
        matches!(f, "config.json" | "generation_config.json" | "special_tokens_map.json" | "chat_template.jinja")
            || (f.starts_with("tokenizer") && f.ends_with(".json"))
    };
    let mut files: Vec<String> = siblings.iter().filter(top_level).filter(|f| is_meta(f)).cloned().collect();
    let has = |name: &str| siblings.iter().any(|f| f == name);
    if has(crate::safetensors::INDEX_FILE) {
        // The shards come from the index itself once it is downloaded (see `download_model`).
        files.push(crate::safetensors::INDEX_FILE.into());
    } else if has(crate::safetensors::SINGLE_FILE) {
        files.push(crate::safetensors::SINGLE_FILE.into());
    } else {
        files.extend(siblings.iter().filter(top_level).filter(|f| f.ends_with(".safetensors")).cloned());
    }
    files
}

/// Download (or find in the cache) what loading `repo` as a model needs; returns the snapshot folder.
/// A repo without safetensors weights but with exactly one `.gguf` file gets that file instead.
pub fn download_model(repo: &str, hub: &HubOptions) -> Result<PathBuf> {
    if !looks_like_repo_id(repo) {
        bail!("{repo:?} is not a hub repo id (expected org/name)");
    }
    let cache = hub.resolved_cache_dir()?;
    let repo_dir = repo_cache_dir(&cache, repo);
    if let Some(snapshot) = cached_snapshot(&repo_dir, &hub.revision) {
        if snapshot_has_model(&snapshot) {
            return Ok(snapshot);
        }
    }
    if hub.offline {
        bail!(
            "{repo} (revision {}) is not in the hub cache {} and HF_HUB_OFFLINE is set; run once online, or unset \
             HF_HUB_OFFLINE",
            hub.revision,
            cache.display()
        );
    }
    let client = Client::new(hub, repo)?;
    let (commit, siblings) = client.repo_info()?;
    let snapshot = repo_dir.join("snapshots").join(&commit);
    let mut files = model_files(&siblings);
    let has_weights = files.iter().any(|f| f.ends_with(".safetensors") || f.ends_with(".index.json"));
    if !has_weights {
        let ggufs: Vec<&String> = siblings.iter().filter(|f| f.ends_with(".gguf")).collect();
        match ggufs.as_slice() {
            [one] => files = vec![(*one).clone()],
            [] => bail!(
                "{repo}: the repo has no safetensors weights (files: {}); ferrotune loads safetensors or GGUF",
                abbreviated_list(&siblings)
            ),
            many => bail!(
                "{repo}: no safetensors weights and several GGUF files; name one as {repo}/<file>.gguf (files: {})",
                abbreviated_list(&many.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ),
        }
    }
    for file in &files {
        client.fetch(&repo_dir, &commit, file)?;
    }
    let index = snapshot.join(crate::safetensors::INDEX_FILE);
    if index.is_file() {
        let routing = crate::safetensors::read_index(&index)?;
        let mut shards: Vec<&String> = routing.values().collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            if !siblings.contains(shard) {
                bail!("{repo}: {} names shard {shard}, which the repo does not have", crate::safetensors::INDEX_FILE);
            }
            client.fetch(&repo_dir, &commit, shard)?;
        }
    }
    write_ref(&repo_dir, &hub.revision, &commit)?;
    Ok(snapshot)
}

/// Download (or find in the cache) one file of `repo`; returns its path in the snapshot.
pub fn download_file(repo: &str, file: &str, hub: &HubOptions) -> Result<PathBuf> {
    if !looks_like_repo_id(repo) || !is_safe_repo_path(file) {
        bail!("{repo:?} / {file:?} is not a hub repo id and file path");
    }
    let cache = hub.resolved_cache_dir()?;
    let repo_dir = repo_cache_dir(&cache, repo);
    if let Some(snapshot) = cached_snapshot(&repo_dir, &hub.revision) {
        if snapshot.join(file).is_file() {
            return Ok(snapshot.join(file));
        }
    }
    if hub.offline {
        bail!(
            "{repo}/{file} (revision {}) is not in the hub cache {} and HF_HUB_OFFLINE is set; run once online, or \
             unset HF_HUB_OFFLINE",
            hub.revision,
            cache.display()
        );
    }
    let client = Client::new(hub, repo)?;
    let (commit, siblings) = client.repo_info()?;
    if !siblings.iter().any(|f| f == file) {
        bail!("{repo} has no file {file:?} at revision {} (files: {})", hub.revision, abbreviated_list(&siblings));
    }
    let path = client.fetch(&repo_dir, &commit, file)?;
    write_ref(&repo_dir, &hub.revision, &commit)?;
    Ok(path)
}

fn abbreviated_list(files: &[String]) -> String {
    let mut shown: Vec<&str> = files.iter().take(12).map(String::as_str).collect();
    if files.len() > 12 {
        shown.push("...");
    }
    shown.join(", ")
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot folder `revision` resolves to in the cache, if any.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?.trim().to_string()
    };
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// A snapshot holds a loadable model: config.json plus every weight file (all shards of an index), or one GGUF.
fn snapshot_has_model(snapshot: &Path) -> bool {
    let index = snapshot.join(crate::safetensors::INDEX_FILE);
    if snapshot.join("config.json").is_file() {
        if index.is_file() {
            return crate::safetensors::read_index(&index).is_ok_and(|r| r.values().all(|f| snapshot.join(f).is_file()));
        }
        if snapshot.join(crate::safetensors::SINGLE_FILE).is_file() {
            return true;
        }
    }
    fs::read_dir(snapshot).is_ok_and(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".gguf")).count() == 1)
}

fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if revision == commit {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::msg(format!("cannot create {}: {e}", parent.display())))?;
    }
    fs::write(&path, commit).map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))
}

// ---- HTTP -------------------------------------------------------------------------------------------------

struct Client<'a> {
    agent: ureq::Agent,
    hub: &'a HubOptions,
    repo: &'a str,
}

/// What a `HEAD` on a resolve URL says about a file.
struct FileMeta {
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (a CDN URL for LFS files).
    url: String,
}

impl<'a> Client<'a> {
    fn new(hub: &'a HubOptions, repo: &'a str) -> Result<Client<'a>> {
        if !hub.endpoint.starts_with("http://") && !hub.endpoint.starts_with("https://") {
            bail!("hub endpoint {:?} must start with http:// or https:// (check HF_ENDPOINT)", hub.endpoint);
        }
        // Redirects are followed by hand: the first response carries the commit and ETag headers, and the token
        // must not travel to another host.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent(format!("ferrotune/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Client { agent, hub, repo })
    }

    fn endpoint(&self) -> &str {
        self.hub.endpoint.trim_end_matches('/')
    }

    /// One request, no redirects; the token only goes to the endpoint's own host.
    fn request(&self, method: &str, url: &str, range_from: Option<u64>) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let builder = ureq::http::Request::builder().method(method).uri(url);
        let builder = match (&self.hub.token, origin(url) == origin(self.endpoint())) {
            (Some(token), true) => builder.header("Authorization", format!("Bearer {token}")),
            _ => builder,
        };
        let builder = match range_from {
            Some(n) if n > 0 => builder.header("Range", format!("bytes={n}-")),
            _ => builder,
        };
        let request = builder.body(()).map_err(ureq::Error::Http)?;
        self.agent.run(request)
    }

    fn network_error(&self, what: &str, e: ureq::Error) -> Error {
        Error::msg(format!(
            "{}: cannot reach {} for {what}: {e}; check the network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to \
             use only the cache",
            self.repo,
            self.endpoint()
        ))
    }

    /// An error for a non-success status, naming the repo and what was asked for.
    fn status_error(&self, what: &str, response: &ureq::http::Response<ureq::Body>) -> Error {
        let status = response.status().as_u16();
        let code = header(response, "x-error-code").unwrap_or_default();
        let repo = self.repo;
        let message = if code == "RepoNotFound" || (status == 404 && what.starts_with("the file list")) {
            format!(
                "{repo}: repository not found on {} ({what}, HTTP {status}); check the id, or set HF_TOKEN if it is private",
                self.endpoint()
            )
        } else if status == 404 || code == "EntryNotFound" || code == "RevisionNotFound" {
            format!("{repo}: {what} not found (HTTP {status}{}); wrong revision or file name?", code_note(&code))
        } else if status == 401 || status == 403 || code == "GatedRepo" {
            format!(
                "{repo}: access denied for {what} (HTTP {status}{}); the repo is gated or private: accept its license \
                 on the model page and set HF_TOKEN to a token that has access",
                code_note(&code)
            )
        } else {
            format!("{repo}: {what} failed with HTTP {status}{}", code_note(&code))
        };
        Error::msg(message)
    }

    /// (commit, file list) of the revision.
    fn repo_info(&self) -> Result<(String, Vec<String>)> {
        let url = format!("{}/api/models/{}/revision/{}", self.endpoint(), self.repo, encode_segment(&self.hub.revision));
        let what = format!("the file list at revision {}", self.hub.revision);
        let mut response = self.follow("GET", &url, None, &what)?;
        if response.status().as_u16() != 200 {
            return Err(self.status_error(&what, &response));
        }
        let text = response.body_mut().read_to_string().map_err(|e| self.network_error(&what, e))?;
        let info: Value =
            serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {url} did not return JSON: {e}", self.repo)))?;
        let commit = info.get("sha").and_then(Value::as_str).filter(|s| is_safe_repo_path(s) && !s.contains('/'));
        let Some(commit) = commit else { bail!("{}: {url} returned no usable \"sha\"", self.repo) };
        let siblings = info
            .get("siblings")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(|f| f.get("rfilename").and_then(Value::as_str)).map(str::to_string).collect())
            .unwrap_or_default();
        Ok((commit.to_string(), siblings))
    }

    /// Send `method`, following up to 10 redirects by hand.
    fn follow(&self, method: &str, url: &str, range_from: Option<u64>, what: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let response = self.request(method, &url, range_from).map_err(|e| self.network_error(what, e))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = header(&response, "location") else { return Ok(response) };
            url = join_url(&url, &location);
        }
        bail!("{}: too many redirects for {what}", self.repo)
    }

    /// `HEAD` the resolve URL: ETag, size and where the bytes are.
    fn file_meta(&self, commit: &str, file: &str) -> Result<FileMeta> {
        let what = format!("file {file}");
        let mut url = resolve_url(self.endpoint(), self.repo, commit, file);
        let mut etag = None;
        let mut size = None;
        for _ in 0..10 {
            let response = self.request("HEAD", &url, None).map_err(|e| self.network_error(&what, e))?;
            // The first answer that names the file's ETag wins (X-Linked-* on an LFS redirect describe the
            // blob; the CDN's own ETag would not be the hub's).
            if etag.is_none() {
                etag = header(&response, "x-linked-etag").or_else(|| header(&response, "etag"));
                size = header(&response, "x-linked-size").or_else(|| header(&response, "content-length")).and_then(|s| s.parse().ok());
            }
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = header(&response, "location") else { bail!("{}: redirect without Location for {what}", self.repo) };
                url = join_url(&url, &location);
                continue;
            }
            if status.as_u16() != 200 {
                return Err(self.status_error(&what, &response));
            }
            let etag = etag
                .map(|e| normalize_etag(&e))
                .filter(|e| !e.is_empty() && is_safe_repo_path(e) && !e.contains('/'))
                .ok_or_else(|| Error::msg(format!("{}: the server sent no usable ETag for {file}", self.repo)))?;
            return Ok(FileMeta { etag, size, url });
        }
        bail!("{}: too many redirects for {what}", self.repo)
    }

    /// Make `snapshots/{commit}/{file}` exist, downloading the blob unless the cache has it.
    fn fetch(&self, repo_dir: &Path, commit: &str, file: &str) -> Result<PathBuf> {
        if !is_safe_repo_path(file) {
            bail!("{}: refusing file name {file:?} (it would leave the snapshot folder)", self.repo);
        }
        let target = repo_dir.join("snapshots").join(commit).join(file);
        if target.is_file() {
            return Ok(target);
        }
        let meta = self.file_meta(commit, file)?;
        let blobs = repo_dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| Error::msg(format!("cannot create {}: {e}", blobs.display())))?;
        let blob = blobs.join(&meta.etag);
        let complete = fs::metadata(&blob).is_ok_and(|m| meta.size.is_none_or(|s| m.len() == s));
        if !complete {
            self.download_blob(&meta, &blob, file)?;
        }
        link_snapshot_file(&blob, &target, file)?;
        Ok(target)
    }

    fn download_blob(&self, meta: &FileMeta, blob: &Path, file: &str) -> Result<()> {
        let what = format!("file {file}");
        let partial = blob.with_file_name(format!("{}.incomplete", meta.etag));
        let io_err = |e: std::io::Error| Error::msg(format!("{}: cannot write {}: {e}", self.repo, partial.display()));
        let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|s| have > s) {
            have = 0;
        }
        let mut response = if meta.size == Some(have) && have > 0 {
            None
        } else {
            Some(self.follow("GET", &meta.url, Some(have), &what)?)
        };
        let mut out = OpenOptions::new().create(true).append(true).open(&partial).map_err(io_err)?;
        if let Some(response) = response.as_mut() {
            match response.status().as_u16() {
                206 => {
                    // The server must resume exactly where our bytes end; anything else starts over.
                    let start = header(response, "content-range")
                        .and_then(|r| r.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
                    if start != Some(have) {
                        bail!("{}: the server resumed {file} at an unexpected offset ({start:?}, have {have}); delete {} and retry", self.repo, partial.display());
                    }
                }
                200 => {
                    // A server that ignores Range sends the whole file: drop what we had.
                    out.set_len(0).map_err(io_err)?;
                    have = 0;
                }
                416 if have > 0 => {
                    // Our partial file is already the whole thing (size unknown before); keep it as is.
                }
                _ => return Err(self.status_error(&what, response)),
            }
        }
        if let Some(mut response) = response.filter(|r| r.status().as_u16() != 416) {
            let mut progress = Progress::new(file, meta.size, have);
            let mut reader = response.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).map_err(|e| {
                    Error::msg(format!(
                        "{}: download of {file} stopped at {} bytes: {e}; run again to resume",
                        self.repo, progress.done
                    ))
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(io_err)?;
                progress.advance(n as u64);
            }
            progress.finish();
        }
        out.sync_all().map_err(io_err)?;
        drop(out);
        let got = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if let Some(size) = meta.size {
            if got != size {
                bail!("{}: download of {file} ended at {got} of {size} bytes; run again to resume", self.repo);
            }
        }
        fs::rename(&partial, blob).map_err(|e| Error::msg(format!("cannot move {} into place: {e}", partial.display())))
    }
}

fn code_note(code: &str) -> String {
    if code.is_empty() { String::new() } else { format!(", {code}") }
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `W/"abc"` -> `abc`, as huggingface_hub names blobs.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn resolve_url(endpoint: &str, repo: &str, revision: &str, file: &str) -> String {
    let path: Vec<String> = file.split('/').map(encode_segment).collect();
    format!("{endpoint}/{repo}/resolve/{}/{}", encode_segment(revision), path.join("/"))
}

/// Percent-encode one URL path segment (branch names may hold `/`, file names spaces).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Resolve a `Location` header against the URL it came from.
fn join_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{location}")
    }
}

/// `snapshots/{commit}/{file}` -> `../../blobs/{etag}` (one more `..` per folder in `file`); a copy where the
/// file system refuses symlinks.
fn link_snapshot_file(blob: &Path, target: &Path, file: &str) -> Result<()> {
    let parent = target.parent().ok_or_else(|| Error::msg(format!("bad snapshot path {}", target.display())))?;
    fs::create_dir_all(parent).map_err(|e| Error::msg(format!("cannot create {}: {e}", parent.display())))?;
    if fs::symlink_metadata(target).is_ok() {
        fs::remove_file(target).map_err(|e| Error::msg(format!("cannot replace {}: {e}", target.display())))?;
    }
    let depth = file.split('/').count() + 1;
    let mut relative = PathBuf::new();
    for _ in 0..depth {
        relative.push("..");
    }
    relative.push("blobs");
    relative.push(blob.file_name().unwrap_or_default());
    #[cfg(unix)]
    if std::os::unix::fs::symlink(&relative, target).is_ok() {
        return Ok(());
    }
    let _ = relative;
    fs::copy(blob, target).map(|_| ()).map_err(|e| Error::msg(format!("cannot copy {} to {}: {e}", blob.display(), target.display())))
}

// ---- progress ---------------------------------------------------------------------------------------------

/// Bytes, rate and ETA on stderr: one redrawn line on a terminal, a plain line every few seconds otherwise.
struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    start_bytes: u64,
    started: Instant,
    last_shown: Instant,
    tty: bool,
}

impl Progress {
    fn new(label: &str, total: Option<u64>, already: u64) -> Progress {
        let now = Instant::now();
        Progress { label: label.into(), total, done: already, start_bytes: already, started: now, last_shown: now, tty: std::io::stderr().is_terminal() }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
        if self.last_shown.elapsed() >= every {
            self.last_shown = Instant::now();
            self.show(false);
        }
    }

    fn finish(&mut self) {
        self.show(true);
    }

    fn show(&self, last: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.done - self.start_bytes) as f64 / secs;
        let amount = match self.total {
            Some(t) => format!("{} / {} ({:.0}%)", human(self.done as f64), human(t as f64), 100.0 * self.done as f64 / t.max(1) as f64),
            None => human(self.done as f64),
        };
        let eta = match self.total {
            Some(t) if !last && rate > 0.0 && t > self.done => {
                let s = ((t - self.done) as f64 / rate) as u64;
                format!("  eta {}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
            }
            _ => String::new(),
        };
        let line = format!("{}  {amount}  {}/s{eta}", self.label, human(rate));
        if self.tty {
            eprint!("\r\x1b[2K{line}{}", if last { "\n" } else { "" });
        } else {
            eprintln!("{line}");
        }
    }
}

fn human(bytes: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} {}", units[unit]) } else { format!("{value:.1} {}", units[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_urls() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M"));
        for bad in ["a", "a/b/c", "./x", "../x", "a/..", "a//b", "/a/b", "a b/c"] {
            assert!(!looks_like_repo_id(bad), "{bad}");
        }
        assert_eq!(split_repo_file("org/name/dir/f.gguf"), Some(("org/name", "dir/f.gguf")));
        assert_eq!(split_repo_file("org/name/../x.gguf"), None);
        assert_eq!(join_url("https://h.co/a/resolve/main/x", "/api/y"), "https://h.co/api/y");
        assert_eq!(join_url("https://h.co/a/b", "https://cdn.x/z"), "https://cdn.x/z");
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(resolve_url("http://e", "o/n", "refs/pr/1", "a b.json"), "http://e/o/n/resolve/refs%2Fpr%2F1/a%20b.json");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
    }

    #[test]
    fn model_file_selection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let files = model_files(&s(&[
            "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "consolidated.safetensors",
            "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx", "original/tokenizer.json",
            "x.gguf", "README.md",
        ]));
        assert_eq!(files, s(&["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"]));
        let files = model_files(&s(&["config.json", "model.safetensors", "other.safetensors"]));
        assert_eq!(files, s(&["config.json", "model.safetensors"]));
    }
}
