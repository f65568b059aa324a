//! Where a gallery's vectors are ([`VectorStore`]), what the engine needs of them
//! ([`GalleryIndex`]), and which part of a gallery a sharded writer indexes ([`Shard`]).

use std::fmt;
use std::str::FromStr;

use capmatch_store::exact::Access;
use capmatch_store::{AnnIndex, AnnOptions, AnnStatus, ExactIndex, VectorHit, VectorIndex, VectorQuery};

use crate::error::{EngineError, Result};

/// A gallery's vectors as the engine uses them: the [`VectorIndex`] contract (which every
/// backend passes, see `capmatch_store::contract`), the exact path on demand, and our
/// approximate index where the backend is the local one.
pub(crate) trait GalleryIndex: VectorIndex {
    /// Every query answered exactly, whatever index the backend would otherwise use
    /// (`capmatch search --exact`, and the truth `capmatch ann tune` and `verify` measure
    /// against).
    fn search_many_exact(&self, queries: &[VectorQuery<'_>]) -> capmatch_store::Result<Vec<Vec<VectorHit>>>;
    /// The state of our approximate index (`capmatch info`, `/api/info`).
    fn ann_status(&self) -> AnnStatus;
    /// Our approximate index, to build and tune; `None` for a store that indexes on its
    /// server.
    fn approximate_mut(&mut self) -> Option<&mut AnnIndex>;
}

impl GalleryIndex for AnnIndex {
    fn search_many_exact(&self, queries: &[VectorQuery<'_>]) -> capmatch_store::Result<Vec<Vec<VectorHit>>> {
        AnnIndex::search_many_exact(self, queries)
    }
    fn ann_status(&self) -> AnnStatus {
        self.status()
    }
    fn approximate_mut(&mut self) -> Option<&mut AnnIndex> {
        Some(self)
    }
}

/// Milvus searches exactly already: its answers are candidates from the server's index
/// re-scored from the stored vectors (see `capmatch_milvus`), and it has no local graphs.
#[cfg(feature = "milvus")]
impl GalleryIndex for capmatch_milvus::MilvusIndex {
    fn search_many_exact(&self, queries: &[VectorQuery<'_>]) -> capmatch_store::Result<Vec<Vec<VectorHit>>> {
        self.search_many(queries)
    }
    fn ann_status(&self) -> AnnStatus {
        AnnStatus::absent(format!("{} (the server indexes the collection)", self.address()), 0)
    }
    fn approximate_mut(&mut self) -> Option<&mut AnnIndex> {
        None
    }
}

/// The vector store of a gallery. The catalog of files is always the SQLite file (`--db`).
#[derive(Debug, Clone, Default)]
pub enum VectorStore {
    /// The exact index in `<db>.vectors/`.
    #[default]
    Local,
    /// A Milvus collection, possibly shared by the writers of a sharded run.
    #[cfg(feature = "milvus")]
    Milvus(capmatch_milvus::MilvusAddress),
}

impl VectorStore {
    /// `None` or a path-like value: the local index; `milvus://HOST:PORT/COLLECTION`: Milvus,
    /// its token from `token_file` or the environment.
    pub fn parse(store: Option<&str>, token_file: Option<&std::path::Path>) -> Result<Self> {
        match store {
            None | Some("") | Some("local") => Ok(Self::Local),
            Some(s) if s.starts_with("milvus://") => {
                #[cfg(feature = "milvus")]
                {
                    Ok(Self::Milvus(capmatch_milvus::MilvusAddress::parse(s, token_file)?))
                }
                #[cfg(not(feature = "milvus"))]
                {
                    let _ = token_file;
                    Err(EngineError::invalid(format!("{s}: this capmatch was built without the `milvus` feature")))
                }
            }
            Some(s) => Err(EngineError::invalid(format!("unknown vector store {s:?}: use `local` or milvus://HOST:PORT/COLLECTION"))),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local)
    }

    /// Opens the vector index of the gallery at `db` in this store.
    pub(crate) fn open(
        &self,
        db: &std::path::Path,
        access: Access,
        fingerprint: Option<&str>,
        shard: Shard,
    ) -> Result<Box<dyn GalleryIndex>> {
        match self {
            Self::Local => {
                let exact = ExactIndex::open(&ExactIndex::dir_for(db), access, fingerprint)?;
                let _ = shard; // a local store has one writer, which indexes what it is given
                Ok(Box::new(AnnIndex::open(exact, &AnnIndex::dir_for(db), AnnOptions::default())))
            }
            #[cfg(feature = "milvus")]
            Self::Milvus(address) => {
                let options = capmatch_milvus::MilvusOptions {
                    fingerprint: fingerprint.map(str::to_owned),
                    shard: shard.to_string(),
                    writable: access == Access::ReadWrite,
                };
                Ok(Box::new(capmatch_milvus::MilvusIndex::open(address, options)?))
            }
        }
    }
}

impl fmt::Display for VectorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => write!(f, "local"),
            #[cfg(feature = "milvus")]
            Self::Milvus(a) => write!(f, "{a}"),
        }
    }
}

/// Shard `index` of `count` of a gallery: the files whose content hash falls in it. N
/// writers with shards 0/N .. N−1/N index disjoint parts of one gallery with no
/// coordination; the whole gallery is 0/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self::ALL
    }
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the content with this blake3 hex hash belongs to the shard (its first 64
    /// bits modulo the count).
    pub fn contains(&self, hash: &str) -> bool {
        if self.count <= 1 {
            return true;
        }
        let prefix = u64::from_str_radix(hash.get(..16).unwrap_or(hash), 16).unwrap_or(0);
        prefix % self.count as u64 == self.index as u64
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a shard: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_hashes() {
        let hashes: Vec<String> = (0..300).map(|i| blake3::hash(&[i as u8, (i >> 8) as u8]).to_hex().to_string()).collect();
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for h in &hashes {
            assert_eq!(shards.iter().filter(|s| s.contains(h)).count(), 1, "every content is in exactly one shard");
        }
        let sizes: Vec<usize> = shards.iter().map(|s| hashes.iter().filter(|h| s.contains(h)).count()).collect();
        assert!(sizes.iter().all(|&n| n > 60), "roughly even: {sizes:?}");
        assert!(Shard::ALL.contains(&hashes[0]));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!("2/5".parse::<Shard>().unwrap().to_string(), "2/5");
    }
}
