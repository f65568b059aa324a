//! capmatch-store: where a gallery lives.
//!
//! Storage is split the way storage engines split it:
//!
//! - a [`Catalog`] knows the files: which path has which content (by hash), its domain, its
//!   captions, which files were skipped and why, and which models made the vectors. The one
//!   implementation is [`SqliteCatalog`], a single SQLite file.
//! - a [`VectorIndex`] holds the vectors of every image — its image vector and the vectors of
//!   its captions — keyed by [`ImageId`], and answers searches. "An image scores by its best
//!   caption" is part of its contract. [`ExactIndex`] keeps them in memory-mapped files
//!   beside the catalog and searches them exhaustively; other backends (an approximate
//!   index, a Milvus collection) implement the same trait and pass the same
//!   [`contract`] suite. [`AnnIndex`] wraps the exact index with HNSW graphs (usearch) for
//!   approximate search past a million images, re-scoring its candidates exactly.
//!
//! The catalog is the source of truth: the engine writes vectors first and commits the
//! catalog after, and reconciles the two when it opens them after a crash (see
//! `capmatch-engine`).

#![deny(unsafe_code)] // only memory maps opt out, each with its SAFETY note

pub mod ann;
pub mod catalog;
mod durable;
pub mod error;
pub mod exact;
pub mod id;
pub mod identity;
pub mod vector_index;

#[cfg(feature = "contract")]
pub mod contract;

pub use ann::{AnnIndex, AnnOptions, AnnState, AnnStatus};
pub use catalog::sqlite::SqliteCatalog;
pub use catalog::{Catalog, CatalogBatch, CatalogSummary, ContentRecord, DomainCount, FileRecord, ImageEntry, SkipRecord, SkippedFile, TrackedFile};
pub use error::{Result, StoreError};
pub use exact::ExactIndex;
pub use id::ImageId;
pub use identity::ModelIdentity;
pub use vector_index::{
    check_records, keep_top_k_with_ties, Among, GraphProgress, IndexStats, NeighbourQuery, Neighbours, NoProgress, ShardCount, VectorHit, VectorIndex, VectorQuery,
    VectorRecord,
};
