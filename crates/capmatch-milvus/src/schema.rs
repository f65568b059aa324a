//! The three collections of a gallery, created on first use and loaded for search.

use std::time::{Duration, Instant};

use milvus::proto::common::KeyValuePair;
use milvus::proto::milvus as rpc;
use milvus::proto::schema::{CollectionSchema, DataType, FieldSchema};
use prost::Message;

use crate::error::MilvusError;
use crate::rpc::Connection;

/// Longest domain name (a VARCHAR needs a bound).
pub(crate) const MAX_DOMAIN: usize = 1024;

/// The collection names of a gallery `NAME`.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub images: String,
    pub captions: String,
    pub meta: String,
}

impl Names {
    pub(crate) fn of(collection: &str) -> Self {
        Self { images: format!("{collection}_images"), captions: format!("{collection}_captions"), meta: format!("{collection}_meta") }
    }
}

fn kv(key: &str, value: impl ToString) -> KeyValuePair {
    KeyValuePair { key: key.into(), value: value.to_string() }
}

fn field(id: i64, name: &str, data_type: DataType) -> FieldSchema {
    FieldSchema { field_id: id, name: name.into(), data_type: data_type as i32, ..Default::default() }
}

fn primary(id: i64, name: &str) -> FieldSchema {
    FieldSchema { is_primary_key: true, auto_id: false, ..field(id, name, DataType::Int64) }
}

fn varchar(id: i64, name: &str, max: usize) -> FieldSchema {
    FieldSchema { type_params: vec![kv("max_length", max)], ..field(id, name, DataType::VarChar) }
}

fn vector(id: i64, name: &str, dim: usize) -> FieldSchema {
    FieldSchema { type_params: vec![kv("dim", dim)], ..field(id, name, DataType::FloatVector) }
}

/// Longest JSON of an image's catalog entry (a VARCHAR's largest bound).
pub(crate) const MAX_ENTRY: usize = 65535;

/// The image collection: one row per image, keyed by its `ImageId`.
pub(crate) fn images(name: &str, dim: usize) -> CollectionSchema {
    CollectionSchema {
        name: name.into(),
        description: "capmatch images: one row per image".into(),
        fields: vec![
            primary(100, "id"),
            varchar(101, "domain", MAX_DOMAIN),
            varchar(102, "shard", 64),
            field(103, "version", DataType::Int64),
            field(104, "captions", DataType::Int64),
            vector(105, "image", dim),
            varchar(106, "raw", 65535),
            varchar(107, "entry", MAX_ENTRY),
        ],
        ..Default::default()
    }
}

/// The caption collection: one row per caption vector, with its image's id.
pub(crate) fn captions(name: &str, dim: usize) -> CollectionSchema {
    CollectionSchema {
        name: name.into(),
        description: "capmatch captions: one row per caption vector".into(),
        fields: vec![
            primary(100, "pk"),
            field(101, "image_id", DataType::Int64),
            varchar(102, "domain", MAX_DOMAIN),
            field(103, "version", DataType::Int64),
            field(104, "idx", DataType::Int64),
            vector(105, "caption", dim),
            varchar(106, "raw", 65535),
        ],
        ..Default::default()
    }
}

/// The metadata collection: small JSON documents by key (Milvus needs a vector field in
/// every collection; `pad` is a constant).
pub(crate) fn meta(name: &str) -> CollectionSchema {
    CollectionSchema {
        name: name.into(),
        description: "capmatch gallery metadata".into(),
        fields: vec![primary(100, "key"), varchar(101, "value", 65535), vector(102, "pad", 2)],
        ..Default::default()
    }
}

pub(crate) fn exists(conn: &Connection, name: &str) -> Result<bool, MilvusError> {
    let name = name.to_owned();
    let r = conn.call("has collection", |mut c| {
        let name = name.clone();
        async move { c.has_collection(rpc::HasCollectionRequest { collection_name: name, ..Default::default() }).await }
    })?;
    Ok(r.value)
}

/// The dimension of `name`'s vector field `vector`, if the collection exists.
pub(crate) fn dim_of(conn: &Connection, name: &str, vector: &str) -> Result<Option<usize>, MilvusError> {
    if !exists(conn, name)? {
        return Ok(None);
    }
    let owned = name.to_owned();
    let r = conn.call("describe collection", |mut c| {
        let name = owned.clone();
        async move { c.describe_collection(rpc::DescribeCollectionRequest { collection_name: name, ..Default::default() }).await }
    })?;
    let schema = r.schema.ok_or_else(|| MilvusError::Invalid(format!("{name}: the server described no schema")))?;
    let f = schema
        .fields
        .iter()
        .find(|f| f.name == vector)
        .ok_or_else(|| MilvusError::Invalid(format!("{name} is not a capmatch collection: it has no field {vector:?}")))?;
    let dim = f
        .type_params
        .iter()
        .find(|p| p.key == "dim")
        .and_then(|p| p.value.parse().ok())
        .ok_or_else(|| MilvusError::Invalid(format!("{name}: field {vector:?} has no dimension")))?;
    Ok(Some(dim))
}

/// Creates `schema` with an exact (FLAT, inner product) index on `vector` and loads it;
/// a collection another process created meanwhile is used as it is, and one a killed
/// writer left without its index gets it now (creating the same index again is a no-op).
pub(crate) fn create(conn: &Connection, schema: &CollectionSchema, vector: &str) -> Result<(), MilvusError> {
    let name = schema.name.clone();
    if !exists(conn, &name)? {
        let bytes = schema.encode_to_vec();
        let created = conn.call("create collection", |mut c| {
            let (name, schema) = (name.clone(), bytes.clone());
            async move {
                c.create_collection(rpc::CreateCollectionRequest {
                    collection_name: name,
                    schema,
                    shards_num: 1,
                    consistency_level: milvus::proto::common::ConsistencyLevel::Strong as i32,
                    ..Default::default()
                })
                .await
            }
        });
        if let Err(e) = created {
            // Another shard may have created it first.
            if !exists(conn, &name)? {
                return Err(e);
            }
        }
    }
    let indexed = conn.call("create index", |mut c| {
        let name = name.clone();
        let vector = vector.to_owned();
        async move {
            c.create_index(rpc::CreateIndexRequest {
                collection_name: name,
                field_name: vector,
                extra_params: vec![kv("index_type", "FLAT"), kv("metric_type", "IP"), kv("params", "{}")],
                ..Default::default()
            })
            .await
        }
    });
    if let Err(e) = indexed {
        tracing::debug!("{e} (another writer may have indexed {name} first)");
    }
    load(conn, &name)
}

/// Loads a collection for search and waits until it is loaded.
pub(crate) fn load(conn: &Connection, name: &str) -> Result<(), MilvusError> {
    let owned = name.to_owned();
    conn.call("load collection", |mut c| {
        let name = owned.clone();
        async move { c.load_collection(rpc::LoadCollectionRequest { collection_name: name, replica_number: 1, ..Default::default() }).await }
    })?;
    let started = Instant::now();
    loop {
        let progress = conn.call("loading progress", |mut c| {
            let name = owned.clone();
            async move { c.get_loading_progress(rpc::GetLoadingProgressRequest { collection_name: name, ..Default::default() }).await }
        });
        match progress {
            Ok(p) if p.progress >= 100 => return Ok(()),
            // A server without the progress call loads synchronously.
            Err(MilvusError::Server { reason, .. }) if reason.to_lowercase().contains("unimplemented") => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) if started.elapsed() > Duration::from_secs(300) => {
                return Err(MilvusError::Invalid(format!("{name} did not load within 5 minutes")));
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
