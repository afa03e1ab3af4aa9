//! How the store reaches Redis: one server (`redis://`), a primary found through Sentinel
//! (`redis+sentinel://`), or a Redis Cluster. Each reconnects by itself, lazily, so a store is
//! made while Redis is down and works once it is back.

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelServerType},
    AsyncConnectionConfig, FromRedisValue, RedisResult, ScriptInvocation,
};
use tokio::sync::{Mutex, OnceCell};

use super::StoreError;

/// Every call waits at most this long to connect, and this long for its answer.
const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(super) enum Connection {
    Direct(ConnectionManager),
    Sentinel(Arc<Sentinel>),
    Cluster(Arc<Cluster>),
}

impl Connection {
    /// `redis://…`, `rediss://…`, `unix://…`, or `redis+sentinel://HOST:PORT[,…]/SERVICE`.
    pub(super) fn open(url: &str) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return Sentinel::open(rest).map(|s| Self::Sentinel(Arc::new(s)));
        }
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Self::Direct)
            .map_err(StoreError::new)
    }

    /// A Redis Cluster, found from any of its `nodes`.
    pub(super) fn cluster<I, S>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        if nodes.is_empty() {
            return Err(StoreError::new("a Redis Cluster needs at least one node"));
        }
        let client = ClusterClientBuilder::new(nodes)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(2)
            .build()
            .map_err(StoreError::new)?;
        Ok(Self::Cluster(Arc::new(Cluster {
            client,
            connection: OnceCell::new(),
        })))
    }

    /// Runs `call` on the Redis that holds its key.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Self::Direct(connection) => call.invoke_async(&mut connection.clone()).await,
            Self::Sentinel(sentinel) => {
                let mut connection = sentinel.connection().await?;
                let answer = call.invoke_async(&mut connection).await;
                if answer.is_err() {
                    // Dead, or no longer the primary (`READONLY`): ask Sentinel again next time.
                    sentinel.forget();
                }
                answer
            }
            Self::Cluster(cluster) => call.invoke_async(&mut cluster.connection().await?).await,
        }
    }

    /// Whether Redis answers (every node of a cluster).
    pub(super) async fn ping(&self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Self::Direct(connection) => ping.query_async(&mut connection.clone()).await,
            Self::Sentinel(sentinel) => {
                let answer = ping.query_async(&mut sentinel.connection().await?).await;
                if answer.is_err() {
                    sentinel.forget();
                }
                answer
            }
            Self::Cluster(cluster) => ping.query_async(&mut cluster.connection().await?).await,
        }
    }
}

/// The primary of one Sentinel service, asked of Sentinel again whenever a call to it fails.
pub(super) struct Sentinel {
    /// Serializes the lookups, so that a failover makes one, not one per request.
    client: Mutex<SentinelClient>,
    primary: RwLock<Option<MultiplexedConnection>>,
}

impl Sentinel {
    /// `HOST:PORT[,HOST:PORT…]/SERVICE`: the Sentinels, and the service they watch.
    fn open(rest: &str) -> Result<Self, StoreError> {
        let (hosts, service) = rest
            .split_once('/')
            .filter(|(hosts, service)| !hosts.is_empty() && !service.is_empty())
            .ok_or_else(|| {
                StoreError::new("expected redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE_NAME")
            })?;
        let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}/")).collect();
        let client = SentinelClient::build(
            sentinels,
            service.trim_end_matches('/').to_owned(),
            None,
            SentinelServerType::Master,
        )
        .map_err(StoreError::new)?;
        Ok(Self {
            client: Mutex::new(client),
            primary: RwLock::new(None),
        })
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        let mut client = self.client.lock().await;
        if let Some(primary) = self.current() {
            return Ok(primary); // another call found it while this one waited
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let primary = client.get_async_connection_with_config(&config).await?;
        *self.primary.write().unwrap_or_else(PoisonError::into_inner) = Some(primary.clone());
        Ok(primary)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.primary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn forget(&self) {
        *self.primary.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A Redis Cluster: connected on first use (and retried until it succeeds); the redis crate's
/// cluster connection then follows slot moves and failovers by itself.
pub(super) struct Cluster {
    client: redis::cluster::ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl Cluster {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}
