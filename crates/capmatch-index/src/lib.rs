//! capmatch-index: the caption index (embedded storage), incremental crash-safe indexing,
//! and exact search over the stored vectors.
//!
//! - [`store`]: the [`Store`] trait and [`SqliteStore`], the on-disk `CaptionIndex` format
//!   (one SQLite file, WAL, schema versioned).
//! - [`walk`]: which files of the given folders are candidate images.
//! - [`models`]: the [`GalleryModels`] trait the indexer drives (captioner + CLIP), and the
//!   [`ModelIdentity`] recorded with the vectors so that vectors of different models never mix.
//! - [`indexer`]: the incremental, batched, pipelined indexing job.
//! - [`search`]: the in-memory [`Gallery`] and exact top-k search.

pub mod indexer;
pub mod models;
pub mod search;
pub mod store;
pub mod walk;

pub use indexer::{index_folders, IndexObserver, IndexOptions, IndexReport, NoObserver};
pub use models::{GalleryModels, ModelIdentity};
pub use search::{dot, Gallery, Hit, Scoring};
pub use store::{IndexSummary, SkippedFile, SqliteStore, Store, StoreError, SCHEMA_VERSION};
