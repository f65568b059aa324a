//! Which models made the vectors of an index.

use serde::{Deserialize, Serialize};

/// Everything that determines the vectors and captions stored in an index.
///
/// Two runs may share an index only if their identities are equal: a caption embedding
/// from one CLIP is meaningless next to an image embedding from another, and captions
/// produced with another prompt or captioner would silently change what search matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// CLIP model: hub id or local path, as given.
    pub clip: String,
    /// Hash of the CLIP checkpoint's configuration (detects a different model behind the
    /// same name, e.g. a re-exported local directory).
    pub clip_config: String,
    /// Captioner model: hub id or local path, as given.
    pub captioner: String,
    /// Hash of the captioner checkpoint's configuration.
    pub captioner_config: String,
    /// Prompt the captions continue.
    pub prompt: String,
}

impl ModelIdentity {
    /// A short fingerprint of what determines the vectors' space (the CLIP config and the
    /// caption settings), recorded by vector backends so that a vector file or collection is
    /// never used with other models' vectors.
    pub fn vector_fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [&self.clip_config, &self.captioner_config, &self.prompt] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        h.finalize().to_hex()[..16].to_string()
    }
}

impl std::fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CLIP {} (config {}), captioner {} (config {}), prompt {:?}",
            self.clip,
            short(&self.clip_config),
            self.captioner,
            short(&self.captioner_config),
            self.prompt
        )
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
