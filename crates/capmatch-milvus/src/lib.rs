//! capmatch-milvus: a gallery's vectors in a Milvus collection, shared by the writers of a
//! sharded run (see `docs/milvus.md` for the schema, the commit protocol and deployment).
//!
//! [`MilvusIndex`] implements `capmatch_store::VectorIndex` over three collections named
//! after the gallery `NAME`:
//!
//! | collection | primary key | fields |
//! | --- | --- | --- |
//! | `NAME_images` | `id` (the `ImageId`, INT64) | `domain` (a filtered field: Milvus 2.3.5 returned too few rows for a filter on a partition key), `shard` (the writer's "I/N"), `version`, `captions` (count), `image` (FLOAT_VECTOR) |
//! | `NAME_captions` | `pk` (hash of id, version, position) | `image_id`, `domain`, `version`, `idx`, `caption` (FLOAT_VECTOR) |
//! | `NAME_meta` | `key` | `value` (JSON: the format and the models' fingerprint; each shard's generation), `pad` |
//!
//! One vector field per collection, so the schema works on Milvus 2.3. Searches are exact:
//! Milvus (FLAT, inner product) proposes candidates, and they are re-scored with
//! `capmatch_retrieval` from their stored vectors, so scores and ties are the retrieval
//! module's. The SDK is async; a small single-threaded tokio runtime inside the backend
//! keeps `VectorIndex` synchronous.

mod address;
mod error;
mod fields;
mod index;
mod rpc;
mod schema;

pub use address::{MilvusAddress, DATABASE_ENV, TOKEN_ENV};
pub use error::MilvusError;
pub use index::{MilvusIndex, MilvusOptions};
pub use rpc::{DEFAULT_RETRY_WINDOW, RETRY_ENV};

/// The variable naming the Milvus server (HOST:PORT) the tests run against; `.ci/run` sets
/// it, and `scripts/milvus.sh start lite|server PORT` starts one.
pub const TEST_SERVER_ENV: &str = "CAPMATCH_MILVUS_ADDR";

/// The test server named by [`TEST_SERVER_ENV`]; without one, says on stderr that the
/// calling test is skipped and returns `None`.
pub fn test_server() -> Option<String> {
    let server = std::env::var(TEST_SERVER_ENV).ok().filter(|a| !a.is_empty());
    if server.is_none() {
        eprintln!("SKIPPED: set {TEST_SERVER_ENV}=HOST:PORT (scripts/milvus.sh start lite 19541) to run the Milvus tests");
    }
    server
}
