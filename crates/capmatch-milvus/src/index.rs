//! [`MilvusIndex`]: the `VectorIndex` over the gallery's collections.

use std::collections::{HashMap, HashSet};

use capmatch_retrieval::{components, top_k_images, GalleryVectors, QueryVectors};
use capmatch_store::{ImageEntry, ImageId, IndexStats, ShardCount, StoreError, VectorHit, VectorIndex, VectorQuery, VectorRecord};
use milvus::proto::common::{ConsistencyLevel, DslType, KeyValuePair, PlaceholderGroup, PlaceholderType, PlaceholderValue};
use milvus::proto::milvus as rpc;
use milvus::proto::schema::{i_ds, FieldData};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::address::MilvusAddress;
use crate::fields::{exact, floats, get_floats, get_longs, get_strings, in_list, longs, quoted, searchable, strings};
use crate::rpc::Connection;
use crate::schema::{self, Names, MAX_DOMAIN, MAX_ENTRY};

type Result<T, E = StoreError> = std::result::Result<T, E>;

const FORMAT: &str = "capmatch-milvus";
/// 2: image rows carry their catalog entry (`entry`).
const VERSION: u32 = 2;
/// The most rows one search or query page returns (Milvus' `topk`/`limit` bound).
const WINDOW: usize = 16384;
/// Ids per `in [...]` filter.
const IDS_PER_FILTER: usize = 2000;
/// Result rows (query vectors × depth) one search request asks for.
const ROWS_PER_SEARCH: usize = 65536;
/// Bytes of vectors per write request (well under the server's message limit).
const BYTES_PER_WRITE: usize = 8 << 20;
/// How far Milvus' own float32 scores may be from the retrieval kernel's (unit vectors):
/// candidates within this margin of the cut are always re-scored.
const SCORE_MARGIN: f32 = 1e-4;

/// How a [`MilvusIndex`] is opened.
#[derive(Debug, Clone)]
pub struct MilvusOptions {
    /// The models' vector fingerprint (`ModelIdentity::vector_fingerprint`): a collection
    /// holding another models' vectors is refused.
    pub fingerprint: Option<String>,
    /// The writer's shard label ("I/N", "0/1" for an unsharded run): rows are tagged with
    /// it, and [`VectorIndex::ids`] and the generation are this shard's own, so that the
    /// writers of a sharded run never reconcile away each other's images.
    pub shard: String,
    pub writable: bool,
}

/// The gallery-wide record (key 0 of the metadata collection).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Header {
    format: String,
    version: u32,
    fingerprint: Option<String>,
}

/// One shard's commit counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardState {
    shard: String,
    generation: u64,
}


/// A `VectorIndex` in a Milvus server. See the crate documentation for the schema and the
/// commit protocol.
pub struct MilvusIndex {
    conn: Connection,
    names: Names,
    options: MilvusOptions,
    dim: Option<usize>,
    generation: u64,
}

fn meta_key(shard: &str) -> i64 {
    // 0 is the header; shard keys are positive 62-bit hashes.
    let h = blake3::hash(format!("capmatch-shard\0{shard}").as_bytes());
    (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) >> 2).max(1) as i64
}

/// The primary key of one caption row: derived from the image, the write's version and the
/// caption's position, so a retried write replaces itself rather than adding rows.
fn caption_pk(id: ImageId, version: i64, idx: usize) -> i64 {
    let mut h = blake3::Hasher::new();
    h.update(&id.0.to_le_bytes());
    h.update(&version.to_le_bytes());
    h.update(&(idx as u64).to_le_bytes());
    (u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")) >> 1) as i64
}

fn new_version(id_seed: u64) -> i64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&id_seed.to_le_bytes());
    (u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes")) >> 1) as i64
}

/// An image's catalog entry as its row keeps it (JSON in `entry`; the id and domain are
/// the row's own fields).
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntry {
    path: String,
    hash: String,
    size: u64,
    width: u32,
    height: u32,
    captions: Vec<String>,
}

impl StoredEntry {
    /// The JSON kept, within the field's bound: captions are left out of an entry that
    /// would not fit (they stay in the writer's catalog).
    fn json(e: &ImageEntry) -> String {
        let mut stored =
            StoredEntry { path: e.path.clone(), hash: e.hash.clone(), size: e.size, width: e.width, height: e.height, captions: e.captions.clone() };
        let mut text = serde_json::to_string(&stored).expect("entries serialise");
        if text.len() > MAX_ENTRY {
            stored.captions.clear();
            text = serde_json::to_string(&stored).expect("entries serialise");
        }
        if text.len() > MAX_ENTRY {
            // A path longer than any file system allows: no entry rather than a refused write.
            return String::new();
        }
        text
    }
}

/// An image row as read back.
struct ImageRow {
    domain: String,
    version: i64,
    image: Vec<f32>,
}

impl MilvusIndex {
    /// Connects to the server at `address` (an unreachable server is one error naming it)
    /// and checks the gallery's collections, if they exist, against `options`.
    pub fn open(address: &MilvusAddress, options: MilvusOptions) -> Result<Self> {
        let conn = Connection::open(address)?;
        let names = Names::of(&address.collection);
        let mut index = Self { conn, names, options, dim: None, generation: 0 };
        if options_need_meta(&index) {
            schema::create(&index.conn, &schema::meta(&index.names.meta), "pad")?;
        }
        index.refresh()?;
        index.check_header()?;
        Ok(index)
    }

    pub fn address(&self) -> &MilvusAddress {
        self.conn.address()
    }

    fn address_text(&self) -> String {
        self.conn.address().to_string()
    }

    /// Refuses another models' vectors, and records this writer's models in a gallery
    /// without any.
    fn check_header(&mut self) -> Result<()> {
        let stored: Option<Header> = self.meta_get(0)?;
        let want = self.options.fingerprint.clone();
        match (&stored, &want) {
            (Some(h), _) if h.format != FORMAT || h.version != VERSION => Err(StoreError::InvalidInput(format!(
                "{} holds {} version {}, not a capmatch gallery this version reads ({FORMAT} {VERSION})",
                self.address_text(),
                h.format,
                h.version
            ))),
            (Some(Header { fingerprint: Some(have), .. }), Some(want)) if have != want && self.count(&self.names.images.clone())? > 0 => {
                Err(StoreError::InvalidInput(format!(
                    "the vectors in {} were made by other models (fingerprint {have}, these models {want}); \
                     use another collection, or the models the collection was built with",
                    self.address_text()
                )))
            }
            _ if self.options.writable && (stored.as_ref().and_then(|h| h.fingerprint.as_ref()) != want.as_ref() && want.is_some()) => {
                self.meta_put(0, &Header { format: FORMAT.into(), version: VERSION, fingerprint: want })
            }
            _ => Ok(()),
        }
    }

    fn meta_get<T: for<'de> Deserialize<'de>>(&self, key: i64) -> Result<Option<T>> {
        if !schema::exists(&self.conn, &self.names.meta)? {
            return Ok(None);
        }
        let fields = self.query(&self.names.meta, &format!("key == {key}"), &["value"], None)?;
        let values = get_strings(&fields, "value").unwrap_or_default();
        match values.first() {
            None => Ok(None),
            Some(v) => serde_json::from_str(v)
                .map(Some)
                .map_err(|e| StoreError::InvalidInput(format!("{}: unreadable metadata: {e}", self.address_text()))),
        }
    }

    fn meta_put<T: Serialize>(&self, key: i64, value: &T) -> Result<()> {
        let text = serde_json::to_string(value).expect("metadata serialises");
        let fields = vec![longs("key", vec![key]), strings("value", vec![text]), floats("pad", 2, vec![1.0, 0.0])];
        self.upsert_rows(&self.names.meta, fields, 1)
    }

    fn require_writer(&self) -> Result<()> {
        if !self.options.writable {
            return Err(StoreError::InvalidInput(format!("{} is open for reading only", self.address_text())));
        }
        Ok(())
    }

    /// Records the next generation of this shard: written before the change it announces,
    /// so that a crash in the middle leaves the catalog's generation behind and the engine
    /// reconciles.
    fn bump_generation(&mut self) -> Result<()> {
        let next = self.generation + 1;
        self.meta_put(meta_key(&self.options.shard), &ShardState { shard: self.options.shard.clone(), generation: next })?;
        self.generation = next;
        Ok(())
    }

    fn upsert_rows(&self, collection: &str, fields: Vec<FieldData>, rows: usize) -> Result<()> {
        let name = collection.to_owned();
        self.conn.call("upsert", |mut c| {
            let request = rpc::UpsertRequest {
                collection_name: name.clone(),
                fields_data: fields.clone(),
                num_rows: rows as u32,
                ..Default::default()
            };
            async move { c.upsert(request).await }
        })?;
        Ok(())
    }

    fn delete(&self, collection: &str, expr: String) -> Result<()> {
        let name = collection.to_owned();
        self.conn.call("delete", |mut c| {
            let request = rpc::DeleteRequest { collection_name: name.clone(), expr: expr.clone(), ..Default::default() };
            async move { c.delete(request).await }
        })?;
        Ok(())
    }

    /// A strongly consistent query.
    fn query(&self, collection: &str, expr: &str, output: &[&str], limit: Option<usize>) -> Result<Vec<FieldData>> {
        let name = collection.to_owned();
        let mut params = Vec::new();
        if let Some(l) = limit {
            params.push(KeyValuePair { key: "limit".into(), value: l.to_string() });
        }
        let output: Vec<String> = output.iter().map(|s| s.to_string()).collect();
        let r = self.conn.call("query", |mut c| {
            let request = rpc::QueryRequest {
                collection_name: name.clone(),
                expr: expr.to_owned(),
                output_fields: output.clone(),
                query_params: params.clone(),
                consistency_level: ConsistencyLevel::Strong as i32,
                ..Default::default()
            };
            async move { c.query(request).await }
        })?;
        Ok(r.fields_data)
    }

    /// Rows of `collection` matching `expr`, paged by primary key `pk` (a query returns at
    /// most a window of rows).
    fn query_all(&self, collection: &str, pk: &str, expr: &str, output: &[&str]) -> Result<Vec<Vec<FieldData>>> {
        let mut pages = Vec::new();
        let mut after: Option<i64> = None;
        let mut out: Vec<&str> = output.to_vec();
        if !out.contains(&pk) {
            out.push(pk);
        }
        loop {
            let mut filter = expr.to_owned();
            if let Some(a) = after {
                filter = if filter.is_empty() { format!("{pk} > {a}") } else { format!("({filter}) && {pk} > {a}") };
            }
            let page = self.query(collection, &filter, &out, Some(WINDOW))?;
            let keys = get_longs(&page, pk).unwrap_or_default();
            let n = keys.len();
            after = keys.iter().copied().max();
            if n > 0 {
                pages.push(page);
            }
            if n < WINDOW {
                return Ok(pages);
            }
        }
    }

    fn count(&self, collection: &str) -> Result<u64> {
        if !schema::exists(&self.conn, collection)? {
            return Ok(0);
        }
        let fields = self.query(collection, "", &["count(*)"], None)?;
        Ok(get_longs(&fields, "count(*)").ok().and_then(|v| v.first().copied()).unwrap_or(0) as u64)
    }

    fn ensure_collections(&mut self, dim: usize) -> Result<()> {
        if self.dim.is_some() {
            return Ok(());
        }
        schema::create(&self.conn, &schema::images(&self.names.images, dim), "image")?;
        schema::create(&self.conn, &schema::captions(&self.names.captions, dim), "caption")?;
        self.dim = schema::dim_of(&self.conn, &self.names.images, "image")?;
        Ok(())
    }

    /// The current rows of these images.
    fn image_rows(&self, ids: &[ImageId]) -> Result<HashMap<ImageId, ImageRow>> {
        let mut out = HashMap::with_capacity(ids.len());
        if self.dim.is_none() {
            return Ok(out);
        }
        for chunk in ids.chunks(IDS_PER_FILTER) {
            let keys: Vec<i64> = chunk.iter().map(|id| id.0 as i64).collect();
            let f = self.query(&self.names.images, &in_list("id", &keys), &["id", "domain", "version", "image", "raw"], None)?;
            let (dim, vectors) = get_floats(&f, "image").unwrap_or((1, Vec::new()));
            let (found, domains, versions) = (get_longs(&f, "id")?, get_strings(&f, "domain")?, get_longs(&f, "version")?);
            let raw = get_strings(&f, "raw")?;
            for (i, id) in found.into_iter().enumerate() {
                let image = exact(&vectors[i * dim..(i + 1) * dim], &raw[i]);
                out.insert(ImageId(id as u64), ImageRow { domain: domains[i].clone(), version: versions[i], image });
            }
        }
        Ok(out)
    }

    /// The full records of these images (their current caption rows only).
    fn records(&self, ids: &[ImageId]) -> Result<HashMap<ImageId, VectorRecord>> {
        let rows = self.image_rows(ids)?;
        let mut captions: HashMap<ImageId, Vec<(i64, Vec<f32>)>> = HashMap::new();
        let present: Vec<i64> = rows.keys().map(|id| id.0 as i64).collect();
        for chunk in present.chunks(IDS_PER_FILTER) {
            let f = self.query(&self.names.captions, &in_list("image_id", chunk), &["image_id", "version", "idx", "caption", "raw"], None)?;
            let (dim, vectors) = get_floats(&f, "caption").unwrap_or((1, Vec::new()));
            let (owners, versions, idx) = (get_longs(&f, "image_id")?, get_longs(&f, "version")?, get_longs(&f, "idx")?);
            let raw = get_strings(&f, "raw")?;
            for (i, owner) in owners.into_iter().enumerate() {
                let id = ImageId(owner as u64);
                // Rows of an earlier write a crash left behind do not count.
                if rows.get(&id).is_some_and(|r| r.version == versions[i]) {
                    captions.entry(id).or_default().push((idx[i], exact(&vectors[i * dim..(i + 1) * dim], &raw[i])));
                }
            }
        }
        Ok(rows
            .into_iter()
            .map(|(id, row)| {
                let mut c = captions.remove(&id).unwrap_or_default();
                c.sort_by_key(|(i, _)| *i);
                (id, VectorRecord { id, domain: row.domain, image: row.image, captions: c.into_iter().flat_map(|(_, v)| v).collect() })
            })
            .collect())
    }

    /// One Milvus search: for each query vector, the ids in `id_field` of the `limit` best
    /// rows and their scores, best first.
    fn search_rows(&self, collection: &str, vector: &str, id_field: &str, queries: &[f32], dim: usize, limit: usize, filter: &str) -> Result<Vec<Vec<(ImageId, f32)>>> {
        let nq = queries.len() / dim;
        let group = PlaceholderGroup {
            placeholders: vec![PlaceholderValue {
                tag: "$0".into(),
                r#type: PlaceholderType::FloatVector as i32,
                values: queries.chunks_exact(dim).map(|q| q.iter().flat_map(|x| x.to_le_bytes()).collect()).collect(),
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let params = vec![
            KeyValuePair { key: "anns_field".into(), value: vector.into() },
            KeyValuePair { key: "topk".into(), value: limit.to_string() },
            KeyValuePair { key: "metric_type".into(), value: "IP".into() },
            KeyValuePair { key: "params".into(), value: "{}".into() },
            KeyValuePair { key: "round_decimal".into(), value: "-1".into() },
        ];
        let name = collection.to_owned();
        let r = self.conn.call("search", |mut c| {
            let request = rpc::SearchRequest {
                collection_name: name.clone(),
                dsl: filter.to_owned(),
                dsl_type: DslType::BoolExprV1 as i32,
                search_input: Some(rpc::search_request::SearchInput::PlaceholderGroup(group.clone())),
                output_fields: vec![id_field.to_owned()],
                search_params: params.clone(),
                nq: nq as i64,
                consistency_level: ConsistencyLevel::Strong as i32,
                ..Default::default()
            };
            async move { c.search(request).await }
        })?;
        let mut out = vec![Vec::new(); nq];
        let Some(data) = r.results else { return Ok(out) };
        if data.topks.iter().all(|&n| n == 0) {
            // Milvus 2.3 answers an empty result with untyped output fields.
            return Ok(out);
        }
        let ids = if id_field == "id" {
            match data.ids.and_then(|i| i.id_field) {
                Some(i_ds::IdField::IntId(a)) => a.data,
                _ => Vec::new(),
            }
        } else {
            get_longs(&data.fields_data, id_field)?
        };
        let mut at = 0usize;
        for (q, &n) in data.topks.iter().enumerate().take(nq) {
            let n = n as usize;
            out[q] = (at..at + n).filter_map(|i| Some((ImageId(*ids.get(i)? as u64), *data.scores.get(i)?))).collect();
            at += n;
        }
        Ok(out)
    }

    /// Exact top-k by the threshold algorithm, for several searches at once: Milvus
    /// proposes candidates (the best rows of each list a target needs, every pending
    /// search's query vectors in one request per list); the candidates are re-scored with
    /// `capmatch_retrieval` from their stored vectors (fetched together for the round); a
    /// search's answer is final once its k-th exact score is above the best any image not
    /// proposed could reach, else its lists are read deeper in the next round.
    fn search_exact_many(&self, queries: &[VectorQuery<'_>], dim: usize) -> Result<Vec<Vec<VectorHit>>> {
        let mut answers: Vec<Option<Vec<VectorHit>>> =
            queries.iter().map(|q| if q.k == 0 { Some(Vec::new()) } else { None }).collect();
        let mut limits: Vec<usize> = queries.iter().map(|q| (q.k * 4 + 16).min(WINDOW)).collect();
        loop {
            let pending: Vec<usize> = (0..queries.len()).filter(|&i| answers[i].is_none()).collect();
            if pending.is_empty() {
                return Ok(answers.into_iter().map(Option::unwrap_or_default).collect());
            }
            // Searches that can share a request: the same filter, lists and depth.
            let mut groups: HashMap<(Option<&str>, bool, bool, usize), Vec<usize>> = HashMap::new();
            for &i in &pending {
                let q = &queries[i];
                groups.entry((q.domain, q.target.needs_captions(), q.target.needs_images(), limits[i])).or_default().push(i);
            }
            let mut candidates: HashMap<usize, HashSet<ImageId>> = HashMap::new();
            let mut unseen: HashMap<usize, f32> = HashMap::new();
            for ((domain, captions, images, limit), members) in groups {
                let filter = match domain {
                    Some(d) => format!("domain == {}", quoted(d)),
                    None => String::new(),
                };
                // Bounded so that one answer (rows × depth) stays well inside a message.
                let rows_per_request = (ROWS_PER_SEARCH / limit).max(1);
                let mut start = 0;
                while start < members.len() {
                    let mut end = start;
                    let mut rows = 0;
                    while end < members.len() && (end == start || rows + queries[members[end]].vectors.len() / dim <= rows_per_request) {
                        rows += queries[members[end]].vectors.len() / dim;
                        end += 1;
                    }
                    let batch = &members[start..end];
                    let vectors: Vec<f32> = batch.iter().flat_map(|&i| queries[i].vectors.iter().copied()).collect();
                    let mut bounds: Vec<(f32, f32)> = vec![(f32::NEG_INFINITY, f32::NEG_INFINITY); batch.len()];
                    for (list, vector, id_field, wanted) in
                        [(&self.names.captions, "caption", "image_id", captions), (&self.names.images, "image", "id", images)]
                    {
                        if !wanted {
                            continue;
                        }
                        let mut lists = self.search_rows(list, vector, id_field, &vectors, dim, limit, &filter)?.into_iter();
                        for (slot, &i) in batch.iter().enumerate() {
                            // The best score a row not returned could have (−∞ when a list
                            // is complete), over the search's query vectors.
                            let mut b = f32::NEG_INFINITY;
                            for found in lists.by_ref().take(queries[i].vectors.len() / dim) {
                                if found.len() >= limit {
                                    let last = found.last().map(|r| r.1).unwrap_or(f32::NEG_INFINITY);
                                    b = if last.is_nan() { f32::INFINITY } else { b.max(last + SCORE_MARGIN) };
                                }
                                candidates.entry(i).or_default().extend(found.into_iter().map(|r| r.0));
                            }
                            if vector == "caption" {
                                bounds[slot].0 = b;
                            } else {
                                bounds[slot].1 = b;
                            }
                        }
                    }
                    for (slot, &i) in batch.iter().enumerate() {
                        // Complete lists (−∞) mean every image was proposed; NaN (a NaN
                        // score at a list's end) means nothing can be concluded yet.
                        let u = match queries[i].target.combine(bounds[slot].0, bounds[slot].1) {
                            s if s.is_nan() => f32::INFINITY,
                            s => s,
                        };
                        unseen.insert(i, u);
                    }
                    start = end;
                }
            }
            let mut all: Vec<ImageId> = candidates.values().flatten().copied().collect::<HashSet<_>>().into_iter().collect();
            all.sort();
            let records = self.records(&all)?;
            for i in pending {
                let q = &queries[i];
                let mut ids: Vec<ImageId> = candidates.remove(&i).unwrap_or_default().into_iter().collect();
                ids.sort();
                let kept: Vec<&VectorRecord> =
                    ids.iter().filter_map(|id| records.get(id)).filter(|r| q.domain.is_none_or(|d| r.domain == d)).collect();
                let hits = rescore(&kept, q, dim);
                let bound = unseen[&i];
                let final_ = bound == f32::NEG_INFINITY
                    || (hits.len() >= q.k && {
                        let kth = hits[q.k - 1].score;
                        !kth.is_nan() && kth > bound
                    });
                if final_ {
                    answers[i] = Some(hits);
                } else if limits[i] >= WINDOW {
                    return Err(StoreError::InvalidInput(format!(
                        "{}: k = {} needs more candidates than one Milvus search returns ({WINDOW}); ask for fewer results",
                        self.address_text(),
                        q.k
                    )));
                } else {
                    limits[i] = (limits[i] * 4).min(WINDOW);
                }
            }
        }
    }

    /// Images per shard and domain, counted from the image collection itself.
    pub fn shard_counts(&self) -> Result<Vec<ShardCount>> {
        let mut counts: HashMap<(String, String), u64> = HashMap::new();
        if schema::exists(&self.conn, &self.names.images)? {
            for page in self.query_all(&self.names.images, "id", "", &["shard", "domain"])? {
                for (s, d) in get_strings(&page, "shard")?.into_iter().zip(get_strings(&page, "domain")?) {
                    *counts.entry((s, d)).or_default() += 1;
                }
            }
        }
        let mut out: Vec<ShardCount> = counts.into_iter().map(|((shard, domain), images)| ShardCount { shard, domain, images }).collect();
        out.sort_by(|a, b| (&a.shard, &a.domain).cmp(&(&b.shard, &b.domain)));
        Ok(out)
    }

    /// Deletes the gallery's collections (tests, and `migrate --restart`).
    pub fn drop_all(&mut self) -> Result<()> {
        self.require_writer()?;
        for name in [&self.names.images, &self.names.captions, &self.names.meta] {
            if schema::exists(&self.conn, name)? {
                let n = name.clone();
                self.conn.call("drop collection", |mut c| {
                    let n = n.clone();
                    async move { c.drop_collection(rpc::DropCollectionRequest { collection_name: n, ..Default::default() }).await }
                })?;
            }
        }
        self.dim = None;
        self.generation = 0;
        Ok(())
    }
}

fn options_need_meta(index: &MilvusIndex) -> bool {
    index.options.writable
}

/// Exact scores of the candidates (ordered by id, so ties come in id order), in the
/// retrieval order with every tie at the k-th score.
fn rescore(records: &[&VectorRecord], q: &VectorQuery<'_>, dim: usize) -> Vec<VectorHit> {
    if records.is_empty() {
        return Vec::new();
    }
    let mut images = Vec::with_capacity(records.len() * dim);
    let mut captions = Vec::new();
    let mut offsets = Vec::with_capacity(records.len() + 1);
    offsets.push(0u32);
    for r in records {
        images.extend_from_slice(&r.image);
        captions.extend_from_slice(&r.captions);
        offsets.push((captions.len() / dim) as u32);
    }
    let gallery = GalleryVectors::new(dim, &images, &captions, &offsets).expect("shapes checked on write");
    let qv = QueryVectors::one(dim, q.vectors);
    let ranked = top_k_images(&gallery, &qv, q.target, q.k, true, &|_| true).pop().unwrap_or_default();
    ranked
        .into_iter()
        .map(|r| VectorHit { id: records[r.position as usize].id, score: r.score, components: components(&gallery, &qv, r.position as usize) })
        .collect()
}

impl VectorIndex for MilvusIndex {
    fn dim(&self) -> Option<usize> {
        self.dim
    }

    fn len(&self) -> usize {
        match self.count(&self.names.images) {
            Ok(n) => n as usize,
            Err(e) => {
                tracing::warn!("{e}");
                0
            }
        }
    }

    fn upsert(&mut self, records: &[VectorRecord]) -> Result<()> {
        self.upsert_with_entries(records, &[])
    }

    fn upsert_with_entries(&mut self, records: &[VectorRecord], entries: &[ImageEntry]) -> Result<()> {
        self.require_writer()?;
        let entries: HashMap<ImageId, String> = entries.iter().map(|e| (e.id, StoredEntry::json(e))).collect();
        if records.is_empty() {
            return Ok(());
        }
        let dim = capmatch_store::check_records(records, self.dim)?;
        if let Some(r) = records.iter().find(|r| r.domain.len() > MAX_DOMAIN) {
            return Err(StoreError::InvalidInput(format!("image {}: a domain name longer than {MAX_DOMAIN} bytes", r.id)));
        }
        self.ensure_collections(dim)?;
        self.bump_generation()?;
        // One version for the whole call: its caption rows are new rows; the image rows,
        // written after them, switch each image to them at once; then the rows of the
        // previous version go. A crash at any point leaves every image either as it was or
        // as written (stale caption rows are ignored and removed by the next write).
        let version = new_version(records[0].id.0 ^ self.generation);
        let per_write = (BYTES_PER_WRITE / (dim * 4 + 64)).max(1);
        let caption_rows: Vec<(ImageId, &str, usize, &[f32])> = records
            .iter()
            .flat_map(|r| r.captions.chunks_exact(dim).enumerate().map(move |(i, v)| (r.id, r.domain.as_str(), i, v)))
            .collect();
        for chunk in caption_rows.chunks(per_write) {
            let (vectors, raw): (Vec<Vec<f32>>, Vec<String>) = chunk.iter().map(|c| searchable(c.3)).unzip();
            let fields = vec![
                longs("pk", chunk.iter().map(|c| caption_pk(c.0, version, c.2)).collect()),
                longs("image_id", chunk.iter().map(|c| c.0 .0 as i64).collect()),
                strings("domain", chunk.iter().map(|c| c.1.to_owned()).collect()),
                longs("version", vec![version; chunk.len()]),
                longs("idx", chunk.iter().map(|c| c.2 as i64).collect()),
                floats("caption", dim, vectors.concat()),
                strings("raw", raw),
            ];
            self.upsert_rows(&self.names.captions, fields, chunk.len())?;
        }
        for chunk in records.chunks(per_write) {
            let (vectors, raw): (Vec<Vec<f32>>, Vec<String>) = chunk.iter().map(|r| searchable(&r.image)).unzip();
            let fields = vec![
                longs("id", chunk.iter().map(|r| r.id.0 as i64).collect()),
                strings("domain", chunk.iter().map(|r| r.domain.clone()).collect()),
                strings("shard", vec![self.options.shard.clone(); chunk.len()]),
                longs("version", vec![version; chunk.len()]),
                longs("captions", chunk.iter().map(|r| (r.captions.len() / dim) as i64).collect()),
                floats("image", dim, vectors.concat()),
                strings("raw", raw),
                strings("entry", chunk.iter().map(|r| entries.get(&r.id).cloned().unwrap_or_default()).collect()),
            ];
            self.upsert_rows(&self.names.images, fields, chunk.len())?;
        }
        let ids: Vec<i64> = records.iter().map(|r| r.id.0 as i64).collect();
        for chunk in ids.chunks(IDS_PER_FILTER) {
            self.delete(&self.names.captions, format!("{} && version != {version}", in_list("image_id", chunk)))?;
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[ImageId]) -> Result<usize> {
        self.require_writer()?;
        if self.dim.is_none() || ids.is_empty() {
            return Ok(0);
        }
        let unique: Vec<ImageId> = ids.iter().copied().collect::<HashSet<_>>().into_iter().collect();
        let present = self.image_rows(&unique)?;
        if present.is_empty() {
            return Ok(0);
        }
        self.bump_generation()?;
        let keys: Vec<i64> = present.keys().map(|id| id.0 as i64).collect();
        // The image rows first: once they are gone the image is gone, whatever remains of
        // its caption rows.
        for chunk in keys.chunks(IDS_PER_FILTER) {
            self.delete(&self.names.images, in_list("id", chunk))?;
        }
        for chunk in keys.chunks(IDS_PER_FILTER) {
            self.delete(&self.names.captions, in_list("image_id", chunk))?;
        }
        Ok(present.len())
    }

    fn get(&self, id: ImageId) -> Result<Option<VectorRecord>> {
        Ok(self.records(&[id])?.remove(&id))
    }

    fn get_many(&self, ids: &[ImageId]) -> Result<Vec<Option<VectorRecord>>> {
        let found = self.records(ids)?;
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    fn search(&self, query: &VectorQuery<'_>) -> Result<Vec<VectorHit>> {
        Ok(self.search_many(std::slice::from_ref(query))?.pop().unwrap_or_default())
    }

    fn search_many(&self, queries: &[VectorQuery<'_>]) -> Result<Vec<Vec<VectorHit>>> {
        let Some(dim) = self.dim else { return Ok(vec![Vec::new(); queries.len()]) };
        for q in queries {
            if q.vectors.is_empty() || q.vectors.len() % dim != 0 {
                return Err(StoreError::Dimension { expected: dim, found: q.vectors.len() });
            }
        }
        self.search_exact_many(queries, dim)
    }

    fn stored_entries(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageEntry>>> {
        let mut found: HashMap<ImageId, ImageEntry> = HashMap::new();
        if self.dim.is_some() {
            for chunk in ids.chunks(IDS_PER_FILTER) {
                let keys: Vec<i64> = chunk.iter().map(|id| id.0 as i64).collect();
                let f = self.query(&self.names.images, &in_list("id", &keys), &["id", "domain", "entry"], None)?;
                let (rows, domains, texts) = (get_longs(&f, "id")?, get_strings(&f, "domain")?, get_strings(&f, "entry")?);
                for ((id, domain), text) in rows.into_iter().zip(domains).zip(texts) {
                    if text.is_empty() {
                        continue;
                    }
                    let e: StoredEntry = serde_json::from_str(&text)
                        .map_err(|e| StoreError::InvalidInput(format!("{}: an unreadable entry of image {id}: {e}", self.address_text())))?;
                    let id = ImageId(id as u64);
                    found.insert(
                        id,
                        ImageEntry { id, path: e.path, domain, hash: e.hash, size: e.size, width: e.width, height: e.height, captions: e.captions },
                    );
                }
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    fn ids(&self) -> Result<Vec<(ImageId, String)>> {
        if self.dim.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // A writer's own images (reconciled against its catalog); a reader's: every shard's.
        let filter = if self.options.writable { format!("shard == {}", quoted(&self.options.shard)) } else { String::new() };
        for page in self.query_all(&self.names.images, "id", &filter, &["id", "domain"])? {
            out.extend(get_longs(&page, "id")?.into_iter().map(|i| ImageId(i as u64)).zip(get_strings(&page, "domain")?));
        }
        Ok(out)
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn flush(&mut self) -> Result<()> {
        // An acknowledged write is already in Milvus' log (it survives a server restart);
        // sealing segments is the server's business.
        Ok(())
    }

    fn refresh(&mut self) -> Result<()> {
        self.dim = schema::dim_of(&self.conn, &self.names.images, "image")?;
        if let Some(dim) = self.dim {
            if self.options.writable {
                // Also finishes collections a writer killed while creating them left
                // without captions or without an index.
                schema::create(&self.conn, &schema::images(&self.names.images, dim), "image")?;
                schema::create(&self.conn, &schema::captions(&self.names.captions, dim), "caption")?;
            } else if !schema::exists(&self.conn, &self.names.captions)? {
                return Err(StoreError::InvalidInput(format!(
                    "{} is incomplete: a writer stopped while creating its collections; \
                     run `capmatch index` with this --store once to finish them",
                    self.address_text()
                )));
            } else {
                schema::load(&self.conn, &self.names.images)?;
                schema::load(&self.conn, &self.names.captions)?;
            }
        }
        // A restarted server may hold every collection released.
        if schema::exists(&self.conn, &self.names.meta)? {
            schema::load(&self.conn, &self.names.meta)?;
        }
        let state: Option<ShardState> = self.meta_get(meta_key(&self.options.shard))?;
        self.generation = state.map(|s| s.generation).unwrap_or(0);
        Ok(())
    }

    fn stats(&self) -> IndexStats {
        let captions = self.count(&self.names.captions).unwrap_or(0);
        IndexStats {
            backend: "milvus".into(),
            location: self.address_text(),
            dim: self.dim,
            images: self.len() as u64,
            captions,
            disk_bytes: 0,
            dead_images: 0,
            shards: self.shard_counts().unwrap_or_else(|e| {
                tracing::warn!("{e}");
                Vec::new()
            }),
        }
    }
}


/// Half-finished states a killed writer or a restarted server leaves, made on purpose (the
/// CLI tests meet them only when a kill lands at the right moment). They need a server:
/// `CAPMATCH_MILVUS_ADDR=HOST:PORT`, as the contract suite.
#[cfg(test)]
mod tests {
    use super::*;
    use capmatch_retrieval::Target;
    use capmatch_store::contract::random_records;

    use crate::test_server as server;

    fn open(server: &str, collection: &str, writable: bool) -> Result<MilvusIndex> {
        let address = MilvusAddress::parse(&format!("milvus://{server}/{collection}"), None).unwrap();
        MilvusIndex::open(&address, MilvusOptions { fingerprint: Some("fp".into()), shard: "0/1".into(), writable })
    }

    fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
    }

    fn release(index: &MilvusIndex, name: &str) {
        let name = name.to_owned();
        index
            .conn
            .call("release collection", |mut c| {
                let name = name.clone();
                async move { c.release_collection(rpc::ReleaseCollectionRequest { collection_name: name, ..Default::default() }).await }
            })
            .unwrap();
    }

    #[test]
    fn a_writer_finishes_collections_a_killed_writer_left_half_made() {
        let Some(server) = server() else { return };
        let name = unique("half_made");
        let records = random_records(20, 8, 3);
        {
            // Killed after creating the image collection, before its index and before the
            // caption collection.
            let index = open(&server, &name, true).unwrap();
            let schema = schema::images(&index.names.images, 8).encode_to_vec();
            let images = index.names.images.clone();
            index
                .conn
                .call("create collection", |mut c| {
                    let (name, schema) = (images.clone(), schema.clone());
                    async move { c.create_collection(rpc::CreateCollectionRequest { collection_name: name, schema, shards_num: 1, ..Default::default() }).await }
                })
                .unwrap();
        }
        let refused = open(&server, &name, false).err().expect("a reader refuses the half-made gallery");
        assert!(refused.to_string().contains("run `capmatch index`"), "{refused}");
        let mut index = open(&server, &name, true).unwrap();
        index.upsert(&records).unwrap();
        let hits = index.search(&VectorQuery { vectors: &records[4].image, target: Target::Image, k: 1, domain: None }).unwrap();
        assert_eq!(hits[0].id, records[4].id);
        let reader = open(&server, &name, false).unwrap();
        assert_eq!(reader.len(), records.len());
        index.drop_all().unwrap();
    }

    #[test]
    fn a_reader_loads_collections_a_restarted_server_holds_released() {
        let Some(server) = server() else { return };
        let name = unique("released");
        let records = random_records(20, 8, 5);
        let mut index = open(&server, &name, true).unwrap();
        index.upsert(&records).unwrap();
        for collection in [&index.names.images, &index.names.captions, &index.names.meta] {
            release(&index, collection);
        }
        let reader = open(&server, &name, false).unwrap();
        assert_eq!(reader.get(records[3].id).unwrap().as_ref(), Some(&records[3]));
        let hits = reader.search(&VectorQuery { vectors: &records[7].image, target: Target::Captions, k: 3, domain: None }).unwrap();
        assert_eq!(hits.len(), 3);
        index.drop_all().unwrap();
    }
}
