//! `capmatch serve`: the HTTP API and the web page (`capmatch-server`) over one gallery.

use std::time::Duration;

use capmatch_engine::BatchConfig;
use capmatch_server::{ModelChoice, ServerConfig};

use crate::commands::models::device;
use crate::{Dtype, ServeArgs};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        store: args.store.store()?,
        host: args.host,
        port: args.port,
        token_file: args.token_file,
        max_upload_bytes: args.max_upload_mb.saturating_mul(1 << 20),
        allow_index_roots: args.allow_index_root,
        cors: args.cors,
        inspect_dir: args.inspect_dir,
        models: ModelChoice {
            clip: args.clip,
            captioner: args.captioner,
            dtype: args.dtype.map(Dtype::engine),
            prompt: args.prompt,
            device: device(&args.device)?,
        },
        batch: BatchConfig { max_batch: args.max_batch.max(1), max_wait: Duration::from_millis(args.max_wait_ms), workers: 1 },
        index_batch_size: args.batch.max(1),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        ..ServerConfig::new(args.db)
    };
    capmatch_server::serve_blocking(config)
}
