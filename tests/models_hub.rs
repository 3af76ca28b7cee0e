//! Hub downloads against a small HTTP/1.1 server written here (std::net, a thread per connection) that serves a
//! tiny Llama in the huggingface.co URL layout: `/api/models/{repo}/revision/{rev}`, `/{repo}/resolve/{rev}/{file}`
//! (LFS files answer 302 to `/cdn/{etag}` with `X-Linked-Etag` / `X-Linked-Size`, like the real hub), Range
//! requests, a gated repo, and knobs to cut a download short or ignore Range.
//!
//! Every test passes its own `HubOptions` (endpoint, cache folder); nothing sets process environment variables.

use ferrotune_models::hub::{download_file, download_model, HubOptions};
use ferrotune_models::loader::{load_model, LoadedModel};
use ferrotune_models::safetensors::save_hf_weights;
use ferrotune_models::{LoadOptions, ModelConfig};
use ferrotune_tensor::{DType, Tensor};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "hf_test_token";

fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ferrotune-hub-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stable 64-hex "sha256-like" id for content (the server's LFS ETags and commits).
fn content_id(bytes: &[u8]) -> String {
    let mut parts = [0xcbf29ce484222325u64, 0x84222325cbf29ce4, 0x1234567890abcdef, 0xfedcba0987654321];
    for (lane, part) in parts.iter_mut().enumerate() {
        for &b in bytes {
            *part = (*part ^ (b as u64 + lane as u64)).wrapping_mul(0x100000001b3);
        }
    }
    parts.iter().map(|p| format!("{p:016x}")).collect()
}

struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    gated: bool,
}

#[derive(Default)]
struct ServerState {
    repos: HashMap<String, Repo>,
    /// Every request as "METHOD path [range] [auth]".
    log: Mutex<Vec<String>>,
    ignore_range: AtomicBool,
    /// Cut the next GET of this blob (etag) after this many bytes, then drop the connection.
    cut_next: Mutex<Option<(String, usize)>>,
}

struct HubServer {
    url: String,
    state: Arc<ServerState>,
}

impl HubServer {
    fn start(repos: HashMap<String, Repo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ServerState { repos, ..ServerState::default() });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        HubServer { url, state }
    }

    fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    fn options(&self, cache: &Path) -> HubOptions {
        HubOptions { endpoint: self.url.clone(), cache_dir: Some(cache.to_path_buf()), ..HubOptions::default() }
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], head_only: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k == "Content-Length") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn h(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn serve(mut stream: TcpStream, state: &ServerState) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    state.log.lock().unwrap().push(format!(
        "{method} {path}{}{}",
        range.as_deref().map(|r| format!(" [{r}]")).unwrap_or_default(),
        auth.as_deref().map(|a| format!(" [{a}]")).unwrap_or_default()
    ));
    let head = method == "HEAD";
    let authorized = auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let not_found = |stream: &mut TcpStream, code: &str| respond(stream, "404 Not Found", &[h("X-Error-Code", code)], b"not found", head);

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, _rev)) = rest.split_once("/revision/") else { return not_found(&mut stream, "RepoNotFound") };
        let Some(r) = state.repos.get(repo) else { return not_found(&mut stream, "RepoNotFound") };
        if r.gated && !authorized {
            return respond(&mut stream, "401 Unauthorized", &[], b"gated", head);
        }
        let siblings: Vec<_> = r.files.keys().map(|f| json!({"rfilename": f})).collect();
        let body = json!({"id": repo, "sha": r.commit, "siblings": siblings}).to_string();
        return respond(&mut stream, "200 OK", &[h("Content-Type", "application/json")], body.as_bytes(), head);
    }
    if let Some(etag) = path.strip_prefix("/cdn/") {
        let blob = state.repos.values().flat_map(|r| r.files.values()).find(|b| content_id(b) == etag);
        let Some(blob) = blob else { return not_found(&mut stream, "EntryNotFound") };
        let start = match (&range, state.ignore_range.load(Ordering::SeqCst)) {
            (Some(r), false) => r.strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse::<usize>().ok()),
            _ => None,
        };
        let cut = {
            let mut cut = state.cut_next.lock().unwrap();
            match cut.as_ref() {
                Some((e, n)) if e == etag && !head => {
                    let n = *n;
                    *cut = None;
                    Some(n)
                }
                _ => None,
            }
        };
        let (status, body, mut extra) = match start {
            Some(s) if s < blob.len() => ("206 Partial Content", &blob[s..], vec![h("Content-Range", format!("bytes {s}-{}/{}", blob.len() - 1, blob.len()))]),
            Some(_) => return respond(&mut stream, "416 Range Not Satisfiable", &[], b"", head),
            None => ("200 OK", &blob[..], vec![]),
        };
        extra.push(h("ETag", format!("\"cdn-{etag}\"")));
        if let Some(n) = cut {
            // Promise the whole body, send part of it, hang up: a dropped connection mid-download.
            extra.push(h("Content-Length", body.len()));
            let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in &extra {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes())?;
            stream.write_all(&body[..n.min(body.len())])?;
            stream.flush()?;
            return stream.shutdown(std::net::Shutdown::Both);
        }
        return respond(&mut stream, status, &extra, body, head);
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segments.len() == 5 && segments[2] == "resolve" {
        let repo = format!("{}/{}", segments[0], segments[1]);
        let file = segments[4].replace("%20", " ");
        let Some(r) = state.repos.get(&repo) else { return not_found(&mut stream, "RepoNotFound") };
        if r.gated && !authorized {
            return respond(&mut stream, "401 Unauthorized", &[h("X-Error-Code", "GatedRepo")], b"gated", head);
        }
        let Some(blob) = r.files.get(&file) else { return not_found(&mut stream, "EntryNotFound") };
        let etag = content_id(blob);
        if file.ends_with(".safetensors") {
            // LFS: redirect to the CDN, describing the blob in X-Linked-* headers.
            let headers = [
                h("Location", format!("/cdn/{etag}")),
                h("X-Linked-Etag", format!("\"{etag}\"")),
                h("X-Linked-Size", blob.len()),
                h("X-Repo-Commit", &r.commit),
                h("ETag", "\"not-the-blob\""),
            ];
            return respond(&mut stream, "302 Found", &headers, b"", head);
        }
        let headers = [h("ETag", format!("W/\"{}\"", &etag[..40])), h("X-Repo-Commit", &r.commit)];
        return respond(&mut stream, "200 OK", &headers, blob, head);
    }
    not_found(&mut stream, "EntryNotFound")
}

// ---- the tiny model ---------------------------------------------------------------------------------------

fn tiny_config() -> ModelConfig {
    ModelConfig::from_hf_json(&json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 700, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 3, "torch_dtype": "float32"
    }))
    .unwrap()
}

fn tiny_tensors() -> Vec<(String, Tensor)> {
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![700, 16]),
        ("model.norm.weight".to_string(), vec![16]),
    ];
    for i in 0..2 {
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![16, 16]),
            ("self_attn.k_proj.weight", vec![8, 16]),
            ("self_attn.v_proj.weight", vec![8, 16]),
            ("self_attn.o_proj.weight", vec![16, 16]),
            ("mlp.gate_proj.weight", vec![32, 16]),
            ("mlp.up_proj.weight", vec![32, 16]),
            ("mlp.down_proj.weight", vec![16, 32]),
            ("input_layernorm.weight", vec![16]),
            ("post_attention_layernorm.weight", vec![16]),
        ] {
            out.push((format!("model.layers.{i}.{n}"), s));
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (name, shape))| (name, Tensor::randn(100 + i as u64, &shape, 0.0, 0.02, DType::F32).unwrap()))
        .collect()
}

/// The files of the tiny model repo; `max_shard_bytes` small enough gives a sharded checkpoint.
fn tiny_repo_files(max_shard_bytes: u64) -> BTreeMap<String, Vec<u8>> {
    let dir = scratch_dir("repo-src");
    let tensors = tiny_tensors();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_hf_weights(&dir, &refs, max_shard_bytes).unwrap();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        files.insert(entry.file_name().to_string_lossy().to_string(), std::fs::read(entry.path()).unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/bytelevel_bpe");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        files.insert(f.into(), std::fs::read(tokenizer.join(f)).unwrap());
    }
    files.insert("config.json".into(), tiny_config().to_hf_json().to_string().into_bytes());
    files.insert("generation_config.json".into(), br#"{"bos_token_id": 0, "eos_token_id": 3}"#.to_vec());
    // What a model load must not fetch.
    for f in ["pytorch_model.bin", "onnx/model.onnx", "README.md", "original/consolidated.safetensors"] {
        files.insert(f.into(), b"not needed".to_vec());
    }
    files
}

fn repo(files: BTreeMap<String, Vec<u8>>, gated: bool) -> Repo {
    let commit = content_id(&files.values().flatten().copied().collect::<Vec<u8>>())[..40].to_string();
    Repo { commit, files, gated }
}

fn standard_server() -> HubServer {
    HubServer::start(HashMap::from([
        ("tiny/llama".to_string(), repo(tiny_repo_files(u64::MAX), false)),
        ("tiny/sharded".to_string(), repo(tiny_repo_files(20_000), false)),
        ("tiny/gated".to_string(), repo(tiny_repo_files(u64::MAX), true)),
    ]))
}

fn check_tiny(model: &LoadedModel) {
    assert_eq!(model.config, tiny_config());
    let tensors = tiny_tensors();
    assert_eq!(model.weights.len(), tensors.len());
    for (name, t) in &tensors {
        let got = model.weights.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(got.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap(), "{name}");
    }
    let tok = model.tokenizer.as_ref().expect("tokenizer downloaded");
    assert_eq!(tok.eos_token_id(), Some(3));
    assert_eq!(model.generation_config.as_ref().unwrap()["eos_token_id"], json!(3));
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

// ---- tests ------------------------------------------------------------------------------------------------

#[test]
fn fresh_download_lands_in_the_hf_cache_layout_and_the_second_load_needs_no_network() {
    let server = standard_server();
    let cache = scratch_dir("fresh");
    let hub = server.options(&cache);
    let model = load_model("tiny/llama", &opts(), &hub).unwrap();
    check_tiny(&model);

    let commit = &server.state.repos["tiny/llama"].commit;
    let repo_dir = cache.join("models--tiny--llama");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), *commit);
    let snapshot = repo_dir.join("snapshots").join(commit);
    assert_eq!(model.source, snapshot);
    // Snapshot entries are relative symlinks into blobs/, named by ETag (X-Linked-Etag for LFS files).
    let weights_blob = content_id(&server.state.repos["tiny/llama"].files["model.safetensors"]);
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(link, Path::new("../../blobs").join(&weights_blob));
    let config_link = std::fs::read_link(snapshot.join("config.json")).unwrap();
    assert!(config_link.starts_with("../../blobs"), "{config_link:?}");
    assert!(repo_dir.join("blobs").join(&weights_blob).is_file());
    let mut names: Vec<String> = std::fs::read_dir(&snapshot).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);

    let log = server.requests();
    assert!(!log.iter().any(|r| r.contains(".bin") || r.contains("onnx") || r.contains("README") || r.contains("original")), "{log:#?}");
    assert!(!log.iter().any(|r| r.contains("Bearer")), "no token configured, none sent");

    // Second load: served from the cache, zero requests.
    let before = server.requests().len();
    check_tiny(&load_model("tiny/llama", &opts(), &hub).unwrap());
    assert_eq!(server.requests().len(), before, "cache hit must not touch the network");
    // Offline mode reads the same cache.
    let offline = HubOptions { offline: true, ..hub.clone() };
    check_tiny(&load_model("tiny/llama", &opts(), &offline).unwrap());
    assert_eq!(server.requests().len(), before);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn sharded_repo_downloads_the_shards_its_index_names() {
    let server = standard_server();
    let cache = scratch_dir("sharded");
    let model = load_model("tiny/sharded", &opts(), &server.options(&cache)).unwrap();
    check_tiny(&model);
    let shards = server.state.repos["tiny/sharded"].files.keys().filter(|f| f.starts_with("model-")).count();
    assert!(shards > 1);
    let fetched = std::fs::read_dir(&model.source).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("model-")).count();
    assert_eq!(fetched, shards);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let server = standard_server();
    let cache = scratch_dir("resume");
    let hub = server.options(&cache);
    let blob = server.state.repos["tiny/llama"].files["model.safetensors"].clone();
    let etag = content_id(&blob);
    *server.state.cut_next.lock().unwrap() = Some((etag.clone(), blob.len() / 2));

    let e = load_model("tiny/llama", &opts(), &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/llama") && e.contains("model.safetensors") && e.contains("resume"), "{e}");
    let partial = cache.join("models--tiny--llama/blobs").join(format!("{etag}.incomplete"));
    // Everything the server sent before hanging up was kept (the client may not have seen the very last bytes).
    let kept = std::fs::metadata(&partial).unwrap().len() as usize;
    assert!(kept > 0 && kept <= blob.len() / 2, "kept {kept} of {}", blob.len());

    check_tiny(&load_model("tiny/llama", &opts(), &hub).unwrap());
    let wanted = format!("GET /cdn/{etag} [bytes={kept}-]");
    assert!(server.requests().iter().any(|r| r == &wanted), "{:#?}", server.requests());
    assert_eq!(std::fs::read(cache.join("models--tiny--llama/blobs").join(&etag)).unwrap(), blob);
    assert!(!partial.exists());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_server_that_ignores_range_restarts_the_blob() {
    let server = standard_server();
    server.state.ignore_range.store(true, Ordering::SeqCst);
    let cache = scratch_dir("norange");
    let blob = server.state.repos["tiny/llama"].files["model.safetensors"].clone();
    let etag = content_id(&blob);
    let blobs = cache.join("models--tiny--llama/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    // A stale partial download: wrong bytes that must be thrown away when the server answers 200.
    std::fs::write(blobs.join(format!("{etag}.incomplete")), vec![0xAB; 100]).unwrap();
    check_tiny(&load_model("tiny/llama", &opts(), &server.options(&cache)).unwrap());
    assert_eq!(std::fs::read(blobs.join(&etag)).unwrap(), blob);
    assert!(server.requests().iter().any(|r| r.starts_with(&format!("GET /cdn/{etag} [bytes=100-]"))));
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn offline_without_a_cache_says_so() {
    let server = standard_server();
    let cache = scratch_dir("offline");
    let hub = HubOptions { offline: true, ..server.options(&cache) };
    let e = load_model("tiny/llama", &opts(), &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/llama") && e.contains("HF_HUB_OFFLINE") && e.contains("cache"), "{e}");
    let e = download_file("tiny/llama", "config.json", &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/llama") && e.contains("config.json") && e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(server.requests().is_empty());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn missing_repo_and_file_are_404_errors_naming_them() {
    let server = standard_server();
    let cache = scratch_dir("404");
    let hub = server.options(&cache);
    let e = load_model("tiny/nope", &opts(), &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/nope") && e.contains("not found") && e.contains("404"), "{e}");
    let e = download_file("tiny/llama", "missing.json", &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/llama") && e.contains("missing.json"), "{e}");
    // A repo-file id: only that file is fetched.
    let config = download_file("tiny/llama", "config.json", &hub).unwrap();
    assert_eq!(ModelConfig::from_file(&config).unwrap(), tiny_config());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn gated_repo_needs_a_token() {
    let server = standard_server();
    let cache = scratch_dir("gated");
    let hub = server.options(&cache);
    let e = load_model("tiny/gated", &opts(), &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/gated") && e.contains("401") && e.contains("HF_TOKEN"), "{e}");
    let with_token = HubOptions { token: Some(TOKEN.into()), ..hub };
    check_tiny(&load_model("tiny/gated", &opts(), &with_token).unwrap());
    assert!(server.requests().iter().any(|r| r.contains(&format!("[Bearer {TOKEN}]"))));
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn network_down_is_an_error_naming_the_endpoint() {
    // Bind then drop a listener: the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cache = scratch_dir("down");
    let hub = HubOptions { endpoint: format!("http://127.0.0.1:{port}"), cache_dir: Some(cache.clone()), ..HubOptions::default() };
    let e = download_model("tiny/llama", &hub).unwrap_err().to_string();
    assert!(e.contains("tiny/llama") && e.contains(&format!("127.0.0.1:{port}")) && e.contains("HF_HUB_OFFLINE"), "{e}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn environment_variables_resolve_like_huggingface_hub() {
    let server = standard_server();
    let cache = scratch_dir("env");
    let vars = HashMap::from([("HF_ENDPOINT", format!("{}/", server.url)), ("HF_HUB_CACHE", cache.display().to_string())]);
    let hub = HubOptions::from_env_vars(|k| vars.get(k).cloned());
    assert_eq!(hub.endpoint, server.url, "trailing slash dropped");
    assert_eq!(hub.cache_dir.as_deref(), Some(cache.as_path()));
    assert_eq!((hub.offline, hub.revision.as_str(), hub.token.as_deref()), (false, "main", None));
    check_tiny(&load_model("tiny/llama", &opts(), &hub).unwrap());
    assert!(!server.requests().is_empty(), "HF_ENDPOINT was used");

    let home = scratch_dir("home");
    std::fs::create_dir_all(home.join("hf")).unwrap();
    std::fs::write(home.join("hf/token"), "hf_from_file\n").unwrap();
    let vars = HashMap::from([("HF_HOME", home.join("hf").display().to_string()), ("HF_HUB_OFFLINE", "1".to_string())]);
    let hub = HubOptions::from_env_vars(|k| vars.get(k).cloned());
    assert_eq!(hub.cache_dir, Some(home.join("hf/hub")));
    assert_eq!(hub.endpoint, "https://huggingface.co");
    assert_eq!(hub.token.as_deref(), Some("hf_from_file"));
    assert!(hub.offline);

    let vars = HashMap::from([("HOME", home.display().to_string()), ("HF_TOKEN", "hf_env".to_string()), ("HF_HUB_OFFLINE", "0".to_string())]);
    let hub = HubOptions::from_env_vars(|k| vars.get(k).cloned());
    assert_eq!(hub.cache_dir, Some(home.join(".cache/huggingface/hub")));
    assert_eq!(hub.token.as_deref(), Some("hf_env"));
    assert!(!hub.offline);
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_cache_written_by_huggingface_hub_is_used_as_is() {
    // The layout Python's huggingface_hub leaves behind, built by hand; the endpoint is unreachable on purpose.
    let cache = scratch_dir("python-cache");
    let repo_dir = cache.join("models--someone--tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for (name, bytes) in tiny_repo_files(u64::MAX) {
        if name.contains('/') || name.ends_with(".bin") || name == "README.md" {
            continue;
        }
        let etag = content_id(&bytes);
        std::fs::write(repo_dir.join("blobs").join(&etag), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), snapshot.join(&name)).unwrap();
    }
    let hub = HubOptions { endpoint: "http://127.0.0.1:9".into(), cache_dir: Some(cache.clone()), ..HubOptions::default() };
    check_tiny(&load_model("someone/tiny", &opts(), &hub).unwrap());
    let pinned = HubOptions { revision: commit.into(), ..hub };
    check_tiny(&load_model("someone/tiny", &opts(), &pinned).unwrap());
    let _ = std::fs::remove_dir_all(&cache);
}
