//! Where model files come from: a local directory in the Hugging Face layout, or a hub
//! repository id resolved through the standard Hugging Face cache.
//!
//! `--clip` / `--captioner` take either
//! - a path to a directory holding the checkpoint files (`config.json`, `tokenizer.json`, …);
//! - or a hub id, `org/name` optionally followed by `@revision` (a branch, tag or commit
//!   hash), e.g. `openai/clip-vit-base-patch32@main`.
//!
//! Hub ids go through the cache huggingface_hub uses, with its exact layout, so files that
//! Python tools already downloaded are reused and nothing is downloaded twice:
//!
//! ```text
//! $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
//! └── models--openai--clip-vit-base-patch32/
//!     ├── refs/main                  (the commit hash the branch pointed at)
//!     ├── blobs/<etag>               (file contents)
//!     └── snapshots/<commit>/config.json -> ../../blobs/<etag>
//! ```
//!
//! If the snapshot holds every file needed, it is used without any network access. Otherwise,
//! unless `HF_HUB_OFFLINE=1`, the missing files are downloaded with hf-hub into that same cache
//! (from `$HF_ENDPOINT`, with `$HF_TOKEN`); failing that, one error says what is missing,
//! where it looked, and how to fix it.
//!
//! [`resolve_model`] reads the environment; [`resolve_model_with`] takes a [`HubConfig`]
//! (what tests use, so that they never touch process-wide environment variables).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Which checkpoint files a model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A CLIP model (`--clip`).
    Clip,
    /// A BLIP / BLIP-2 captioner (`--captioner`).
    Captioner,
}

/// Weight layouts, in the order they are preferred (transformers' order).
pub const WEIGHT_CHOICES: &[&str] = &["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

const WEIGHTS_DESCRIPTION: &str =
    "weights (model.safetensors, or model.safetensors.index.json with its shards, or pytorch_model.bin)";

impl ModelKind {
    /// Files that must exist (besides the weights).
    pub fn required_files(self) -> &'static [&'static str] {
        match self {
            Self::Clip | Self::Captioner => &["config.json", "tokenizer.json", "preprocessor_config.json"],
        }
    }

    /// Files used when present.
    pub fn optional_files(self) -> &'static [&'static str] {
        match self {
            Self::Clip => &["tokenizer_config.json", "special_tokens_map.json"],
            Self::Captioner => &["generation_config.json", "tokenizer_config.json", "special_tokens_map.json"],
        }
    }

    /// The command-line flag that takes such a model.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Clip => "--clip",
            Self::Captioner => "--captioner",
        }
    }
}

/// A model whose files are all present in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A directory holding the checkpoint files (a hub cache snapshot for hub ids).
    pub dir: PathBuf,
    /// The spec the user gave (`openai/clip-vit-base-patch32`, `/models/clip`, …).
    pub spec: String,
    /// For hub ids, the commit hash of the snapshot used.
    pub commit: Option<String>,
}

/// Where and how hub ids are resolved. [`HubConfig::from_env`] reads it the way
/// huggingface_hub does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub cache (`…/huggingface/hub`), holding `models--org--name` folders.
    pub cache_dir: PathBuf,
    /// Where to download from (`https://huggingface.co`, or `$HF_ENDPOINT`).
    pub endpoint: String,
    /// Bearer token for private or gated repositories.
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubConfig {
    /// huggingface_hub's rules:
    /// - cache: `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else
    ///   `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (`~` expanded);
    /// - endpoint: `$HF_ENDPOINT`, else `https://huggingface.co`;
    /// - token: `$HF_TOKEN`, else `$HUGGING_FACE_HUB_TOKEN`, else the file `$HF_TOKEN_PATH`
    ///   (default `$HF_HOME/token`) that `huggingface-cli login` writes;
    /// - offline: `$HF_HUB_OFFLINE` (or `$TRANSFORMERS_OFFLINE`) is 1/true/yes/on.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(|p| expand_home(&p)).unwrap_or_else(|| {
            let xdg = var("XDG_CACHE_HOME").map(|p| expand_home(&p)).unwrap_or_else(|| home_dir().join(".cache"));
            xdg.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(|p| expand_home(&p))
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH").map(|p| expand_home(&p)).unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE")).is_some_and(|v| is_true(&v));
        Self { cache_dir, endpoint: endpoint.trim_end_matches('/').to_string(), token, offline, progress: true }
    }

    /// This cache, online, from the public hub, without a token or progress bar.
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
            progress: false,
        }
    }
}

fn is_true(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None if p == "~" => home_dir(),
        None => PathBuf::from(p),
    }
}

/// What a `--clip` / `--captioner` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// An existing local directory.
    LocalDir(PathBuf),
    /// A hub repository at a revision (`main` unless given after `@`).
    Hub { repo: String, revision: String },
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid model '{spec}': {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("model directory {} does not exist", path.display())]
    LocalDirNotFound { path: PathBuf },
    #[error("model path {} is not a directory (expected a directory holding config.json, tokenizer.json, …)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("model directory {} is missing {}", dir.display(), missing.join(", "))]
    MissingFiles { dir: PathBuf, missing: Vec<String> },
    /// The hub files are neither all cached nor downloadable; the message says how to fix it.
    #[error("{message}")]
    Unavailable { repo: String, revision: String, missing: Vec<String>, cache_dir: PathBuf, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid safetensors index: {reason}", path.display())]
    BadIndex { path: PathBuf, reason: String },
}

/// Parses a spec: an existing directory (or anything that looks like a path) is local,
/// `org/name[@revision]` is a hub id.
pub fn parse_spec(spec: &str) -> Result<ModelSpec, HubError> {
    let invalid = |reason: &str| HubError::InvalidSpec { spec: spec.to_string(), reason: reason.to_string() };
    if spec.trim().is_empty() {
        return Err(invalid("empty"));
    }
    let path = expand_home(spec);
    if let Ok(meta) = std::fs::metadata(&path) {
        return if meta.is_dir() { Ok(ModelSpec::LocalDir(path)) } else { Err(HubError::NotADirectory { path }) };
    }
    let looks_like_path = spec.starts_with('/')
        || spec.starts_with('.')
        || spec.starts_with('~')
        || spec.contains('\\')
        || spec.split('@').next().unwrap_or("").matches('/').count() > 1;
    if looks_like_path {
        return Err(HubError::LocalDirNotFound { path });
    }
    let (repo, revision) = match spec.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (spec, "main"),
    };
    if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
        return Err(invalid("bad revision after '@'"));
    }
    let parts: Vec<&str> = repo.split('/').collect();
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
        return Err(invalid(
            "neither an existing directory nor a Hugging Face repository id like 'openai/clip-vit-base-patch32'",
        ));
    }
    Ok(ModelSpec::Hub { repo: repo.to_string(), revision: revision.to_string() })
}

/// Resolves `--clip` / `--captioner` with the environment's [`HubConfig`].
pub fn resolve_model(spec: &str, kind: ModelKind) -> Result<ResolvedModel, HubError> {
    resolve_model_with(spec, kind, &HubConfig::from_env())
}

/// Resolves a spec to a directory holding every file `kind` needs.
pub fn resolve_model_with(spec: &str, kind: ModelKind, config: &HubConfig) -> Result<ResolvedModel, HubError> {
    match parse_spec(spec)? {
        ModelSpec::LocalDir(dir) => {
            let missing = missing_files(&dir, kind)?;
            if !missing.is_empty() {
                return Err(HubError::MissingFiles { dir, missing });
            }
            Ok(ResolvedModel { dir, spec: spec.to_string(), commit: None })
        }
        ModelSpec::Hub { repo, revision } => resolve_hub(spec, &repo, &revision, kind, config),
    }
}

/// `blake3` of `config.json`'s bytes, hex: which model produced an index's vectors.
pub fn config_fingerprint(dir: &Path) -> Result<String, HubError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| HubError::Io { path, source })?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// The files of `kind` missing from `dir` (weights described as one entry when none of the
/// layouts is complete). An empty list means the directory is usable.
pub fn missing_files(dir: &Path, kind: ModelKind) -> Result<Vec<String>, HubError> {
    let mut missing: Vec<String> =
        kind.required_files().iter().filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect();
    match weights_state(dir)? {
        Weights::Complete => {}
        Weights::MissingShards(shards) => missing.extend(shards),
        Weights::None => missing.push(WEIGHTS_DESCRIPTION.to_string()),
    }
    Ok(missing)
}

enum Weights {
    /// The first complete layout.
    Complete,
    /// The index is there, these shards are not.
    MissingShards(Vec<String>),
    None,
}

fn weights_state(dir: &Path) -> Result<Weights, HubError> {
    if dir.join("model.safetensors").is_file() {
        return Ok(Weights::Complete);
    }
    let index = dir.join("model.safetensors.index.json");
    let mut incomplete = None;
    if index.is_file() {
        let shards = shard_names(&index)?;
        let missing: Vec<String> = shards.iter().filter(|s| !dir.join(s).is_file()).cloned().collect();
        if missing.is_empty() {
            return Ok(Weights::Complete);
        }
        incomplete = Some(missing);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Ok(Weights::Complete);
    }
    Ok(incomplete.map(Weights::MissingShards).unwrap_or(Weights::None))
}

/// The distinct shard file names of a `model.safetensors.index.json`.
fn shard_names(index: &Path) -> Result<Vec<String>, HubError> {
    let text = std::fs::read_to_string(index).map_err(|source| HubError::Io { path: index.to_path_buf(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| HubError::BadIndex { path: index.to_path_buf(), reason: e.to_string() })?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| HubError::BadIndex {
        path: index.to_path_buf(),
        reason: "no weight_map object".into(),
    })?;
    let mut names = BTreeSet::new();
    for v in map.values() {
        let name = v.as_str().ok_or_else(|| HubError::BadIndex {
            path: index.to_path_buf(),
            reason: "weight_map values must be file names".into(),
        })?;
        if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c == "..") {
            return Err(HubError::BadIndex { path: index.to_path_buf(), reason: format!("unsafe shard name {name:?}") });
        }
        names.insert(name.to_string());
    }
    Ok(names.into_iter().collect())
}

/// `models--org--name`, as huggingface_hub names a model repository's cache folder.
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The snapshot directory a revision maps to in the cache, and its commit hash, exactly as
/// `huggingface_hub.try_to_load_from_cache` resolves it: `refs/<revision>` holds the commit
/// of a branch or tag; otherwise the revision is taken as a commit hash.
pub fn cached_snapshot(cache_dir: &Path, repo: &str, revision: &str) -> Option<(String, PathBuf)> {
    let repo_dir = cache_dir.join(repo_folder_name(repo));
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(hash) => hash.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return None;
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    snapshot.is_dir().then_some((commit, snapshot))
}

fn resolve_hub(
    spec: &str,
    repo: &str,
    revision: &str,
    kind: ModelKind,
    config: &HubConfig,
) -> Result<ResolvedModel, HubError> {
    let cached = cached_snapshot(&config.cache_dir, repo, revision);
    let missing = match &cached {
        Some((commit, snapshot)) => {
            let missing = missing_files(snapshot, kind)?;
            if missing.is_empty() {
                tracing::debug!("{repo}@{revision}: using cached snapshot {}", snapshot.display());
                return Ok(ResolvedModel { dir: snapshot.clone(), spec: spec.to_string(), commit: Some(commit.clone()) });
            }
            missing
        }
        None => missing_files(Path::new("/nonexistent-capmatch-snapshot"), kind)?,
    };
    let unavailable = |why: String, missing: Vec<String>| {
        let mut message = unavailable_message(repo, revision, kind, config, &missing, &why);
        message.push_str(&format!(
            "\n  note: '{spec}' is not a local directory, so it was taken as a hub repository id"
        ));
        HubError::Unavailable {
            repo: repo.to_string(),
            revision: revision.to_string(),
            missing,
            cache_dir: config.cache_dir.clone(),
            message,
        }
    };
    if config.offline {
        return Err(unavailable("offline mode (HF_HUB_OFFLINE=1) forbids downloading".into(), missing));
    }
    match download(repo, revision, kind, config, cached.as_ref().map(|(c, _)| c.as_str())) {
        Ok((commit, snapshot)) => {
            let still = missing_files(&snapshot, kind)?;
            if still.is_empty() {
                Ok(ResolvedModel { dir: snapshot, spec: spec.to_string(), commit: Some(commit) })
            } else {
                Err(unavailable("the repository does not contain them".into(), still))
            }
        }
        Err(why) => Err(unavailable(why, missing)),
    }
}

fn unavailable_message(
    repo: &str,
    revision: &str,
    kind: ModelKind,
    config: &HubConfig,
    missing: &[String],
    why: &str,
) -> String {
    let repo_cache = config.cache_dir.join(repo_folder_name(repo));
    let mut needed: Vec<String> = kind.required_files().iter().map(|s| s.to_string()).collect();
    needed.push(WEIGHTS_DESCRIPTION.to_string());
    format!(
        "cannot get model '{repo}' (revision {revision}): {why}.\n  \
         needed: {}\n  \
         missing from the cache: {}\n  \
         cache checked: {}\n  \
         to fix: connect to the internet and retry (set HF_TOKEN for gated or private repositories); \
         or run `huggingface-cli download {repo}` on a connected machine and copy {} to {}; \
         or download those files into a directory and pass `{} /path/to/dir`",
        needed.join(", "),
        missing.join(", "),
        repo_cache.display(),
        repo_cache.file_name().map(|n| format!("~/.cache/huggingface/hub/{}", n.to_string_lossy())).unwrap_or_default(),
        config.cache_dir.display(),
        kind.flag(),
    )
}

/// Downloads what the snapshot lacks into the cache; returns `(commit, snapshot dir)`.
/// Errors are one-line reasons for [`unavailable_message`].
fn download(
    repo: &str,
    revision: &str,
    kind: ModelKind,
    config: &HubConfig,
    cached_commit: Option<&str>,
) -> Result<(String, PathBuf), String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let api = ApiBuilder::from_cache(hf_hub::Cache::new(config.cache_dir.clone()))
        .with_endpoint(config.endpoint.clone())
        .with_token(config.token.clone())
        .with_progress(config.progress)
        .with_retries(2)
        .build()
        .map_err(|e| format!("cannot set up downloads: {e}"))?;
    // Files join the snapshot already cached (pinned to its commit), so a snapshot never mixes
    // with another commit's files; without one, the first download fixes the commit.
    let mut pinned = cached_commit.map(str::to_string);
    let handle = |rev: &str| api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, rev.to_string()));

    let listing = handle(pinned.as_deref().unwrap_or(revision)).info().map_err(|e| describe_api_error(repo, &e))?;
    let remote: BTreeSet<String> = listing.siblings.into_iter().map(|s| s.rfilename).collect();
    let commit_of_listing = listing.sha;
    if pinned.is_none() && !commit_of_listing.is_empty() {
        pinned = Some(commit_of_listing);
    }

    if let Some(missing) = kind.required_files().iter().find(|f| !remote.contains(**f)) {
        return Err(format!("the repository has no {missing}"));
    }
    let mut wanted: Vec<String> = kind.required_files().iter().map(|s| s.to_string()).collect();
    wanted.extend(kind.optional_files().iter().filter(|f| remote.contains(**f)).map(|s| s.to_string()));
    let weights = WEIGHT_CHOICES
        .iter()
        .find(|w| remote.contains(**w))
        .ok_or_else(|| format!("the repository has no {WEIGHTS_DESCRIPTION}"))?;
    wanted.push(weights.to_string());

    let mut snapshot: Option<PathBuf> = None;
    let mut queue: std::collections::VecDeque<String> = wanted.into();
    while let Some(file) = queue.pop_front() {
        let rev = pinned.clone().unwrap_or_else(|| revision.to_string());
        let already = cached_snapshot(&config.cache_dir, repo, &rev).map(|(_, dir)| dir.join(&file));
        let path = match already.filter(|p| p.is_file()) {
            Some(p) => p,
            None => {
                tracing::info!("downloading {file} from {repo} ({})", config.endpoint);
                let refs_file = config.cache_dir.join(repo_folder_name(repo)).join("refs").join(&rev);
                let had_ref = refs_file.exists();
                let result = handle(&rev).download(&file);
                // hf-hub writes refs/<revision> even when the revision is a commit hash;
                // huggingface_hub does not, so neither do we.
                if !had_ref && rev != revision && refs_file.exists() {
                    let _ = std::fs::remove_file(&refs_file);
                }
                let path =
                    result.map_err(|e| format!("downloading {file} failed: {}", describe_api_error(repo, &e)))?;
                remove_blob_lock(&path);
                path
            }
        };
        let dir = path.parent().map(Path::to_path_buf).ok_or("bad download path")?;
        if pinned.is_none() {
            pinned = dir.file_name().map(|n| n.to_string_lossy().to_string());
        }
        if file == "model.safetensors.index.json" {
            for shard in shard_names(&path).map_err(|e| e.to_string())? {
                queue.push_back(shard);
            }
        }
        snapshot = Some(dir);
    }
    let snapshot = snapshot.ok_or("nothing to download")?;
    let commit = pinned.unwrap_or_else(|| snapshot.file_name().unwrap_or_default().to_string_lossy().to_string());
    // The branch now points at what we fetched, as huggingface_hub would record it.
    if !is_commit_hash(revision) {
        let refs = config.cache_dir.join(repo_folder_name(repo)).join("refs").join(revision);
        if !refs.exists() {
            if let Some(parent) = refs.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(&refs, &commit);
        }
    }
    Ok((commit, snapshot))
}

/// hf-hub leaves an empty `blobs/<etag>.lock` next to each blob it downloaded
/// (huggingface_hub keeps its locks under `.locks/`); remove it once the download is done.
fn remove_blob_lock(pointer: &Path) {
    let Ok(target) = std::fs::read_link(pointer) else { return };
    let blob = pointer.parent().map(|dir| dir.join(&target)).unwrap_or(target);
    let mut lock = blob.into_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    if std::fs::metadata(&lock).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = std::fs::remove_file(&lock);
    }
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

fn describe_api_error(repo: &str, error: &hf_hub::api::sync::ApiError) -> String {
    use hf_hub::api::sync::ApiError;
    match error {
        ApiError::RequestError(e) => {
            // ureq 2 shows an HTTP error status as "<url>: status code <n>".
            let text = e.to_string();
            let status = text
                .rsplit_once("status code ")
                .and_then(|(_, n)| n.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok());
            match status {
                Some(code @ (401 | 403)) => {
                    format!("access to {repo} was refused (HTTP {code}); gated or private repositories need HF_TOKEN")
                }
                Some(404) => format!("{repo} (or the revision) was not found on the hub (HTTP 404)"),
                Some(code) => format!("the hub answered HTTP {code}"),
                None => format!("cannot reach the hub: {}", one_line(&text)),
            }
        }
        other => one_line(&other.to_string()),
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!(
            parse_spec("openai/clip-vit-base-patch32").unwrap(),
            ModelSpec::Hub { repo: "openai/clip-vit-base-patch32".into(), revision: "main".into() }
        );
        assert_eq!(
            parse_spec("Salesforce/blip-image-captioning-base@v1.0").unwrap(),
            ModelSpec::Hub { repo: "Salesforce/blip-image-captioning-base".into(), revision: "v1.0".into() }
        );
        assert_eq!(parse_spec("gpt2").unwrap(), ModelSpec::Hub { repo: "gpt2".into(), revision: "main".into() });
        assert!(matches!(parse_spec("/no/such/dir"), Err(HubError::LocalDirNotFound { .. })));
        assert!(matches!(parse_spec("./rel"), Err(HubError::LocalDirNotFound { .. })));
        assert!(matches!(parse_spec("a/b/c"), Err(HubError::LocalDirNotFound { .. })));
        assert!(matches!(parse_spec("org/na me"), Err(HubError::InvalidSpec { .. })));
        assert!(matches!(parse_spec("org/name@"), Err(HubError::InvalidSpec { .. })));
        assert!(matches!(parse_spec(""), Err(HubError::InvalidSpec { .. })));
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "YES", "on"] {
            assert!(is_true(v));
        }
        for v in ["0", "false", "", "no"] {
            assert!(!is_true(v));
        }
    }
}
