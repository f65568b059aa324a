//! Indexing image bytes that arrive without a file (uploads to a server).
//!
//! Each upload is kept as a file named by its content hash in `<db>.uploads/` beside the
//! catalog — the gallery serves originals from files, and a later run can re-index it —
//! and then indexed like any other file, with the domain the caller gives. The caller's
//! name is only used for its extension and for messages: no request ever chooses a path.

use std::io::Write;
use std::path::{Path, PathBuf};

use capmatch_core::image_io::{decode_bytes, DecodeLimits};
use capmatch_store::ImageId;
use serde::Serialize;

use super::walk::{mtime_ns, Candidate};
use crate::error::{EngineError, ErrorKind, Result};

/// Image bytes to add to the gallery.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The name the bytes came with (for messages and the file's extension).
    pub name: String,
    pub domain: String,
    pub bytes: Vec<u8>,
}

/// What became of one upload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadOutcome {
    pub name: String,
    /// The indexed image, when it could be indexed.
    pub id: Option<ImageId>,
    /// Why it could not.
    pub error: Option<String>,
    /// The class of `error` when the upload itself is at fault (not an image, too large,
    /// damaged), for a front end's status code.
    #[serde(skip)]
    pub error_kind: Option<ErrorKind>,
}

/// The folder uploads of the gallery at `db` are kept in.
pub fn uploads_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".uploads");
    PathBuf::from(name)
}

/// Checks each upload decodes (under `limits`) and writes the good ones to the uploads
/// folder. Returns, per upload, the file to index or why it is refused.
pub(crate) fn store_uploads(db: &Path, uploads: &[Upload], limits: &DecodeLimits) -> Result<Vec<Result<Candidate, EngineError>>> {
    let dir = uploads_dir(db);
    std::fs::create_dir_all(&dir).map_err(|e| capmatch_store::StoreError::io(&dir, e))?;
    let dir = dir.canonicalize().map_err(|e| capmatch_store::StoreError::io(&dir, e))?;
    let mut out = Vec::with_capacity(uploads.len());
    for upload in uploads {
        if upload.domain.trim().is_empty() {
            return Err(EngineError::invalid("an upload needs a non-empty domain"));
        }
        if let Err(e) = decode_bytes(&upload.bytes, limits) {
            out.push(Err(EngineError::Image { name: None, source: e }));
            continue;
        }
        let hash = blake3::hash(&upload.bytes).to_hex().to_string();
        let path = dir.join(format!("{hash}.{}", extension_of(&upload.name, &upload.bytes)));
        if !path.exists() {
            // Written under a temporary name, then renamed: a crash never leaves a partial
            // file under the final name.
            let tmp = dir.join(format!(".{hash}.partial"));
            let mut f = std::fs::File::create(&tmp).map_err(|e| capmatch_store::StoreError::io(&tmp, e))?;
            f.write_all(&upload.bytes).and_then(|_| f.sync_all()).map_err(|e| capmatch_store::StoreError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| capmatch_store::StoreError::io(&path, e))?;
        }
        let meta = std::fs::metadata(&path).map_err(|e| capmatch_store::StoreError::io(&path, e))?;
        out.push(Ok(Candidate {
            path: path.to_str().ok_or_else(|| EngineError::invalid("the uploads folder's path is not UTF-8"))?.to_owned(),
            domain: upload.domain.trim().to_owned(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        }));
    }
    Ok(out)
}

/// The stored file's extension: that of the format the bytes are in (never taken from the
/// caller's name, which only breaks a tie for SVG, the one format without a signature).
fn extension_of(name: &str, bytes: &[u8]) -> &'static str {
    if let Some(ext) = image::guess_format(bytes).ok().and_then(|f| f.extensions_str().first().copied()) {
        return ext;
    }
    let named_svg = Path::new(name).extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if named_svg || bytes.windows(4).take(1024).any(|w| w == b"<svg") { "svg" } else { "img" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_come_from_the_content_never_from_a_hostile_name() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(extension_of("../../etc/passwd", png), "png");
        assert_eq!(extension_of("photo.jpg", png), "png");
        assert_eq!(extension_of("x.svg", b"<?xml version='1.0'?><svg/>"), "svg");
        assert_eq!(extension_of("x.exe", b"MZ\x90\0"), "img");
    }
}
