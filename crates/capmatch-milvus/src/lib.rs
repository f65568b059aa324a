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
