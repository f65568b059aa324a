//! The connection: a small tokio runtime that makes the async gRPC client synchronous, the
//! authorization headers, and retries with backoff when the server is unreachable.

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use milvus::proto::common::Status;
use milvus::proto::milvus::milvus_service_client::MilvusServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::address::MilvusAddress;
use crate::error::MilvusError;

/// How long a call keeps retrying a server that does not answer before it gives up (a
/// restarting standalone server takes about 30 s to answer again).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(180);
/// The environment variable that changes [`DEFAULT_RETRY_WINDOW`] (seconds).
pub const RETRY_ENV: &str = "CAPMATCH_MILVUS_RETRY_SECS";

#[derive(Clone)]
pub(crate) struct Headers {
    authorization: Option<AsciiMetadataValue>,
    database: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(d) = &self.database {
            request.metadata_mut().insert("dbname", d.clone());
        }
        Ok(request)
    }
}

pub(crate) type Client = MilvusServiceClient<InterceptedService<Channel, Headers>>;

/// A synchronous connection to one Milvus server.
pub(crate) struct Connection {
    runtime: tokio::runtime::Runtime,
    client: Client,
    address: MilvusAddress,
    retry_window: Duration,
}

/// Responses that carry a status.
pub(crate) trait WithStatus {
    fn status(&self) -> Option<&Status>;
}

macro_rules! with_status {
    ($($t:path),* $(,)?) => {$(
        impl WithStatus for $t {
            fn status(&self) -> Option<&Status> {
                self.status.as_ref()
            }
        }
    )*};
}

with_status!(
    milvus::proto::milvus::BoolResponse,
    milvus::proto::milvus::DescribeCollectionResponse,
    milvus::proto::milvus::MutationResult,
    milvus::proto::milvus::QueryResults,
    milvus::proto::milvus::SearchResults,
    milvus::proto::milvus::GetLoadingProgressResponse,
    milvus::proto::milvus::ConnectResponse,
    milvus::proto::milvus::FlushResponse,
    milvus::proto::milvus::GetVersionResponse,
);

impl WithStatus for Status {
    fn status(&self) -> Option<&Status> {
        Some(self)
    }
}

impl Connection {
    /// Connects and checks that the server answers, once: an unreachable server at start is
    /// one clear error naming the address.
    pub(crate) fn open(address: &MilvusAddress) -> Result<Self, MilvusError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MilvusError::Unreachable { address: address.to_string(), reason: e.to_string() })?;
        let headers = Headers {
            authorization: address
                .token
                .as_ref()
                .map(|t| base64::engine::general_purpose::STANDARD.encode(t))
                .map(|t| t.parse().map_err(|_| MilvusError::Invalid("the token is not valid header text".into())))
                .transpose()?,
            database: Some(address.database.clone())
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().map_err(|_| MilvusError::Invalid("the database name is not valid header text".into())))
                .transpose()?,
        };
        let endpoint = Endpoint::from_shared(address.endpoint())
            .map_err(|e| MilvusError::Invalid(format!("{address}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .tcp_nodelay(true);
        // The channel's background tasks live on this runtime (they run inside `block_on`).
        let channel = {
            let _context = runtime.enter();
            endpoint.connect_lazy()
        };
        // Vectors come back in bulk: lift tonic's 4 MiB default on responses.
        let client = MilvusServiceClient::with_interceptor(channel, headers)
            .max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20);
        let retry_window = std::env::var(RETRY_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RETRY_WINDOW);
        let conn = Self { runtime, client, address: address.clone(), retry_window };
        let version = conn.once("connect", |mut c| async move {
            c.get_version(milvus::proto::milvus::GetVersionRequest {}).await
        });
        match version {
            Ok(v) => tracing::debug!("connected to Milvus {} at {address}", v.version),
            Err(MilvusError::Transport { reason, .. }) => {
                return Err(MilvusError::Unreachable { address: address.to_string(), reason });
            }
            Err(e) => return Err(e),
        }
        Ok(conn)
    }

    pub(crate) fn address(&self) -> &MilvusAddress {
        &self.address
    }

    /// One attempt of a call.
    fn once<T, F, Fut>(&self, what: &str, call: F) -> Result<T, MilvusError>
    where
        T: WithStatus,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.runtime.block_on(call(self.client.clone())) {
            Ok(response) => {
                let response = response.into_inner();
                check(&self.address, what, response.status())?;
                Ok(response)
            }
            Err(status) => Err(classify(&self.address, what, status)),
        }
    }

    /// A call, retried with exponential backoff (0.2 s doubling to 5 s) while the server is
    /// unreachable or says to retry, for up to the retry window. Every request this crate
    /// sends is idempotent (upserts and deletes by primary key), so a retry after a lost
    /// answer neither loses nor duplicates anything.
    pub(crate) fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, MilvusError>
    where
        T: WithStatus,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1u32;
        loop {
            match self.once(what, &call) {
                Err(e) if e.is_retryable() && started.elapsed() + backoff < self.retry_window => {
                    tracing::warn!("{e}; retrying in {:.1} s (attempt {attempt})", backoff.as_secs_f32());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn check(address: &MilvusAddress, what: &str, status: Option<&Status>) -> Result<(), MilvusError> {
    match status {
        #[allow(deprecated)]
        Some(s) if s.error_code != 0 || s.code != 0 => Err(MilvusError::Server {
            address: address.to_string(),
            what: what.to_owned(),
            reason: if s.reason.is_empty() { format!("error code {}", s.code.max(s.error_code)) } else { s.reason.clone() },
            retryable: s.retriable,
        }),
        _ => Ok(()),
    }
}

fn classify(address: &MilvusAddress, what: &str, status: tonic::Status) -> MilvusError {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::DeadlineExceeded => {
            let source = std::error::Error::source(&status).map(|s| format!(" ({s})")).unwrap_or_default();
            MilvusError::Transport {
                address: address.to_string(),
                what: what.to_owned(),
                reason: format!("{}{source}", status.message()),
            }
        }
        Code::Unauthenticated | Code::PermissionDenied => MilvusError::Server {
            address: address.to_string(),
            what: what.to_owned(),
            reason: format!("not allowed: {} (check the token)", status.message()),
            retryable: false,
        },
        _ => MilvusError::Server { address: address.to_string(), what: what.to_owned(), reason: status.message().to_owned(), retryable: false },
    }
}
