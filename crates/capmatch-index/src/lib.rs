//! capmatch-index: the caption index (embedded storage), incremental crash-safe indexing,
//! and exact search over the stored vectors.
