//! The Milvus index against the shared contract, on a real server named by
//! `CAPMATCH_MILVUS_ADDR` (HOST:PORT; `scripts/milvus.sh start server|lite PORT` starts one).
//! Without it the tests say so and pass; `.ci/run` sets it, so there they are mandatory.

use capmatch_milvus::{MilvusAddress, MilvusIndex, MilvusOptions};
use capmatch_store::contract::{self, random_records, Harness};
use capmatch_store::{VectorIndex, VectorQuery};

use capmatch_milvus::test_server as server;

fn address(server: &str, collection: &str) -> MilvusAddress {
    MilvusAddress::parse(&format!("milvus://{server}/{collection}"), None).unwrap()
}

fn options(fingerprint: &str, shard: &str) -> MilvusOptions {
    MilvusOptions { fingerprint: Some(fingerprint.into()), shard: shard.into(), writable: true }
}

/// A fresh collection name per test run.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

struct Milvus {
    server: String,
    prefix: String,
    next: usize,
    made: Vec<MilvusAddress>,
}

impl Milvus {
    fn open(&self, name: &str) -> MilvusIndex {
        MilvusIndex::open(&address(&self.server, name), options("fp", "0/1")).unwrap()
    }
}

impl Drop for Milvus {
    fn drop(&mut self) {
        for a in &self.made {
            if let Ok(mut i) = MilvusIndex::open(a, options("fp", "0/1")) {
                let _ = i.drop_all();
            }
        }
    }
}

impl Harness for Milvus {
    type Index = MilvusIndex;

    fn create(&mut self) -> MilvusIndex {
        self.next += 1;
        let name = format!("{}_{}", self.prefix, self.next);
        self.made.push(address(&self.server, &name));
        self.open(&name)
    }

    fn reopen(&mut self, index: MilvusIndex) -> MilvusIndex {
        let name = index.address().collection.clone();
        drop(index);
        self.open(&name)
    }

    fn crash(&mut self, index: MilvusIndex) -> MilvusIndex {
        // The client dies without closing anything; the server keeps what it acknowledged.
        let name = index.address().collection.clone();
        std::mem::forget(index);
        self.open(&name)
    }

    fn keeps_entries(&self) -> bool {
        true
    }
}

#[test]
fn the_milvus_index_passes_the_contract() {
    let Some(server) = server() else { return };
    contract::run_all(&mut Milvus { server, prefix: unique("contract"), next: 0, made: Vec::new() });
}

#[test]
fn another_models_collection_is_refused_and_shards_keep_their_own_ids() {
    let Some(server) = server() else { return };
    let name = unique("owners");
    let a = address(&server, &name);
    let mut first = MilvusIndex::open(&a, options("fp-a", "0/2")).unwrap();
    let records = random_records(20, 8, 3);
    first.upsert(&records[..10]).unwrap();
    let mut second = MilvusIndex::open(&a, options("fp-a", "1/2")).unwrap();
    second.upsert(&records[10..]).unwrap();
    assert_eq!(first.len(), 20, "both shards' images are in one collection");
    assert_eq!(first.ids().unwrap().len(), 10, "a shard lists its own images");
    assert_eq!(second.ids().unwrap().len(), 10);
    let counts = first.shard_counts().unwrap();
    assert_eq!(counts.iter().filter(|c| c.shard == "0/2").map(|c| c.images).sum::<u64>(), 10);
    assert_eq!(counts.iter().map(|c| c.images).sum::<u64>(), 20);
    let q = contract::Rng(9).unit(8);
    let hits = second.search(&VectorQuery { vectors: &q, target: capmatch_retrieval::Target::Captions, k: 20, domain: None }).unwrap();
    assert_eq!(hits.len(), 20, "searches see every shard");
    let err = MilvusIndex::open(&a, options("fp-b", "0/1")).err().expect("other models are refused").to_string();
    assert!(err.contains("other models"), "{err}");
    first.drop_all().unwrap();
}

#[test]
fn an_unreachable_server_is_one_error_naming_it() {
    // A port nothing listens on (the server tests do not need one).
    let a = MilvusAddress::parse("milvus://127.0.0.1:9/nothing", None).unwrap();
    let err = MilvusIndex::open(&a, options("fp", "0/1")).err().expect("nothing listens there").to_string();
    assert!(err.contains("cannot reach Milvus at milvus://127.0.0.1:9/nothing"), "{err}");
}
