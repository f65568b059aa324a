//! capmatch-eval: the cross-domain retrieval protocol (every ordered domain pair),
//! precision@k as UCDIR defines it, mAP, recall@k, and the tables and plots.
