//! The neighbour graph kept between runs, beside the catalog: `<db>.inspect/graph-*.bin`.
//!
//! # Format (version 1, little-endian)
//!
//! | field | |
//! | --- | --- |
//! | magic | `CMIGRAPH` |
//! | version | u32 |
//! | spec | space (u8: 0 image, 1 caption), k (u32), `among` domain (string, empty for all) |
//! | generation | u64: the vector generation the graph was computed at |
//! | images | u32 count, then per image: id (u64), content hash (string), domain (string) |
//! | rows | u32 count, then per row: id (u64), hit count (u32), per hit: id (u64), score, caption score, image score (f32 each), best caption (i32, −1 for none) |
//! | checksum | the first 32 bytes of blake3 of everything before it |
//!
//! Strings are a u32 byte length and UTF-8 bytes. `images` lists every image the graph was
//! computed over (queries and candidates), so that the next run can tell what was added,
//! removed or changed since. The file is written to a temporary name and renamed; one that
//! does not read back (truncated, another version, a bad checksum) is ignored and the graph
//! computed afresh.

use std::path::{Path, PathBuf};

use capmatch_retrieval::ComponentScores;
use capmatch_store::{ImageId, VectorHit};

use crate::error::{InspectError, Result};
use crate::graph::{GraphSpec, Space};

const MAGIC: &[u8; 8] = b"CMIGRAPH";
const VERSION: u32 = 1;

/// One image the graph was computed over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: ImageId,
    pub hash: String,
    pub domain: String,
}

/// A graph as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub spec: GraphSpec,
    pub generation: u64,
    pub members: Vec<Member>,
    pub rows: Vec<(ImageId, Vec<VectorHit>)>,
}

/// The folder of an inspection's cache for the catalog at `db`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".inspect");
    PathBuf::from(name)
}

/// The file of a graph.
pub fn file_for(dir: &Path, spec: &GraphSpec) -> PathBuf {
    let space = match spec.space {
        Space::Image => "image",
        Space::Caption => "caption",
    };
    let among = match &spec.among {
        None => String::new(),
        Some(domain) => {
            // A readable part and a hash, so that any domain name gives a safe, distinct file.
            let readable: String = domain.chars().filter(|c| c.is_ascii_alphanumeric()).take(24).collect();
            format!("-against-{readable}-{}", &blake3::hash(domain.as_bytes()).to_hex()[..8])
        }
    };
    dir.join(format!("graph-{space}-k{}{among}.bin", spec.k))
}

/// Reads the graph of `spec`, if a usable one is stored.
pub fn load(dir: &Path, spec: &GraphSpec) -> Option<Cached> {
    let path = file_for(dir, spec);
    let bytes = std::fs::read(&path).ok()?;
    match decode(&bytes) {
        Ok(cached) if cached.spec == *spec => Some(cached),
        Ok(_) => None,
        Err(why) => {
            tracing::warn!("ignoring the inspection cache {}: {why}", path.display());
            None
        }
    }
}

/// Stores a graph (atomically: a reader sees the old file or the new one).
pub fn save(dir: &Path, cached: &Cached) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| InspectError::io(dir, e))?;
    let path = file_for(dir, &cached.spec);
    let tmp = path.with_extension("bin.tmp");
    std::fs::write(&tmp, encode(cached)).map_err(|e| InspectError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| InspectError::io(&path, e))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn encode(c: &Cached) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(match c.spec.space {
        Space::Image => 0,
        Space::Caption => 1,
    });
    out.extend_from_slice(&(c.spec.k as u32).to_le_bytes());
    put_str(&mut out, c.spec.among.as_deref().unwrap_or(""));
    out.extend_from_slice(&c.generation.to_le_bytes());
    out.extend_from_slice(&(c.members.len() as u32).to_le_bytes());
    for m in &c.members {
        out.extend_from_slice(&m.id.0.to_le_bytes());
        put_str(&mut out, &m.hash);
        put_str(&mut out, &m.domain);
    }
    out.extend_from_slice(&(c.rows.len() as u32).to_le_bytes());
    for (id, hits) in &c.rows {
        out.extend_from_slice(&id.0.to_le_bytes());
        out.extend_from_slice(&(hits.len() as u32).to_le_bytes());
        for h in hits {
            out.extend_from_slice(&h.id.0.to_le_bytes());
            for x in [h.score, h.components.caption, h.components.image] {
                out.extend_from_slice(&x.to_le_bytes());
            }
            let best = h.components.best_caption.map(|b| b as i32).unwrap_or(-1);
            out.extend_from_slice(&best.to_le_bytes());
        }
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// A cursor over the file's bytes that fails instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("the file ends early")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    /// A count of items of at least `min_bytes` each, checked against what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.bytes.len() - self.at {
            return Err("a count exceeds the file".into());
        }
        Ok(n)
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Cached, String> {
    if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not an inspection graph".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("bad checksum (a damaged or half-written file)".into());
    }
    let mut r = Reader { bytes: body, at: MAGIC.len() };
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("format version {version}, this capmatch reads {VERSION}"));
    }
    let space = match r.u8()? {
        0 => Space::Image,
        1 => Space::Caption,
        other => return Err(format!("unknown space {other}")),
    };
    let k = r.u32()? as usize;
    let among = r.string()?;
    let spec = GraphSpec { space, k, among: (!among.is_empty()).then_some(among) };
    let generation = r.u64()?;
    let n = r.count(16)?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push(Member { id: ImageId(r.u64()?), hash: r.string()?, domain: r.string()? });
    }
    let n = r.count(12)?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let id = ImageId(r.u64()?);
        let m = r.count(24)?;
        let mut hits = Vec::with_capacity(m);
        for _ in 0..m {
            let hit_id = ImageId(r.u64()?);
            let (score, caption, image) = (r.f32()?, r.f32()?, r.f32()?);
            let best = r.u32()? as i32;
            hits.push(VectorHit {
                id: hit_id,
                score,
                components: ComponentScores { caption, image, best_caption: (best >= 0).then_some(best as usize) },
            });
        }
        rows.push((id, hits));
    }
    if r.at != body.len() {
        return Err("bytes after the last row".into());
    }
    Ok(Cached { spec, generation, members, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cached {
        let hit = |id: u64, s: f32, best: Option<usize>| VectorHit {
            id: ImageId(id),
            score: s,
            components: ComponentScores { caption: s, image: 0.5, best_caption: best },
        };
        Cached {
            spec: GraphSpec { space: Space::Caption, k: 3, among: Some("références/été".into()) },
            generation: 42,
            members: vec![
                Member { id: ImageId(1), hash: "aa".into(), domain: "photo".into() },
                Member { id: ImageId(2), hash: "bb".into(), domain: "références/été".into() },
            ],
            rows: vec![(ImageId(1), vec![hit(2, 0.25, Some(0)), hit(3, f32::NEG_INFINITY, None)]), (ImageId(9), vec![])],
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let c = sample();
        let bytes = encode(&c);
        assert_eq!(decode(&bytes).unwrap(), c);
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
    }

    #[test]
    fn each_spec_has_its_own_safe_file() {
        let dir = Path::new("cache");
        let a = file_for(dir, &GraphSpec { space: Space::Image, k: 10, among: None });
        let b = file_for(dir, &GraphSpec { space: Space::Caption, k: 10, among: None });
        let c = file_for(dir, &GraphSpec { space: Space::Caption, k: 10, among: Some("../etc".into()) });
        let d = file_for(dir, &GraphSpec { space: Space::Caption, k: 10, among: Some("etc".into()) });
        assert_eq!(a, Path::new("cache/graph-image-k10.bin"));
        assert!(a != b && c != d && b != c);
        assert_eq!(c.parent(), Some(dir), "a domain name never leaves the folder");
    }

    #[test]
    fn a_stored_graph_is_found_by_its_spec_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        save(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path(), &c.spec), Some(c.clone()));
        assert_eq!(load(dir.path(), &GraphSpec { k: 4, ..c.spec.clone() }), None);
        std::fs::write(file_for(dir.path(), &c.spec), b"CMIGRAPH garbage that is long enough to have a checksum....").unwrap();
        assert_eq!(load(dir.path(), &c.spec), None, "a damaged file is ignored");
    }
}
