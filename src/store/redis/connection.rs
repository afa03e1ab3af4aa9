//! How the store reaches Redis: one server (`redis://`), a primary found through Sentinel
//! (`redis+sentinel://`), or a Redis Cluster. Each reconnects by itself, lazily, so a store is
//! made while Redis is down and works once it is back, and each follows a primary that moved:
//! a call that finds a replica (`READONLY`) or a dead connection makes the next call connect
//! anew (through Sentinel, for a Sentinel service).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelServerType},
    AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation,
    ServerErrorKind,
};
use tokio::sync::Mutex;

use super::StoreError;

/// Every call waits at most this long to connect, and this long for its answer.
const TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed attempt to connect, calls fail at once for this long instead of queueing
/// behind attempts that would fail the same way.
const BACKOFF: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub(super) enum Connection {
    Direct(Arc<Current<ConnectionManager>>, Arc<redis::Client>),
    Sentinel(
        Arc<Current<MultiplexedConnection>>,
        Arc<Lookup<SentinelClient>>,
    ),
    Cluster(Arc<Current<ClusterConnection>>, Arc<Lookup<ClusterClient>>),
}

impl Connection {
    /// `redis://…`, `rediss://…`, `unix://…`, or `redis+sentinel://HOST:PORT[,…]/SERVICE`.
    pub(super) fn open(url: &str) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let client = sentinel_client(rest)?;
            return Ok(Self::Sentinel(
                Arc::default(),
                Arc::new(Lookup::new(client)),
            ));
        }
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        Ok(Self::Direct(Arc::default(), Arc::new(client)))
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
        Ok(Self::Cluster(Arc::default(), Arc::new(Lookup::new(client))))
    }

    /// Runs `call` on the Redis that holds its key (any primary, for a call without keys).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            // The manager reconnects by itself; only one that leads to a replica is replaced.
            Self::Direct(current, client) => {
                let (generation, mut connection) = current.get_or(|| direct(client))?;
                let answer = call.invoke_async(&mut connection).await;
                current.forget_after(generation, &answer, is_replica);
                answer
            }
            Self::Sentinel(current, lookup) => {
                let (generation, mut connection) =
                    current.get_or_look_up(lookup, sentinel_primary).await?;
                let answer = call.invoke_async(&mut connection).await;
                current.forget_after(generation, &answer, lost_the_primary);
                answer
            }
            // The cluster connection follows slot moves and failovers by itself.
            Self::Cluster(current, lookup) => {
                let (_, mut connection) = current.get_or_look_up(lookup, cluster).await?;
                call.invoke_async(&mut connection).await
            }
        }
    }
}

type Connecting<'a, C> = Pin<Box<dyn Future<Output = RedisResult<C>> + Send + 'a>>;

/// The primary Sentinel names now.
fn sentinel_primary(client: &mut SentinelClient) -> Connecting<'_, MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    Box::pin(async move { client.get_async_connection_with_config(&config).await })
}

fn cluster(client: &mut ClusterClient) -> Connecting<'_, ClusterConnection> {
    Box::pin(client.get_async_connection())
}

/// A connection manager on one server: it reconnects when the connection drops.
fn direct(client: &redis::Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// `HOST:PORT[,HOST:PORT…]/SERVICE`: the Sentinels, and the service they watch.
fn sentinel_client(rest: &str) -> Result<SentinelClient, StoreError> {
    let (hosts, service) = rest
        .split_once('/')
        .filter(|(hosts, service)| !hosts.is_empty() && !service.trim_end_matches('/').is_empty())
        .ok_or_else(|| {
            StoreError::new("expected redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE_NAME")
        })?;
    let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}/")).collect();
    SentinelClient::build(
        sentinels,
        service.trim_end_matches('/').to_owned(),
        None,
        SentinelServerType::Master,
    )
    .map_err(StoreError::new)
}

/// Whether an error means the connection no longer leads to a usable primary (dead, or a
/// replica now), rather than a failed command.
fn lost_the_primary(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || is_replica(err)
}

/// Whether the server answered as a replica (`READONLY`): the primary has moved.
fn is_replica(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// The connection in use, with a generation, so that a call forgets only the connection it
/// failed on, never a newer one another call has just made. Read-locked for a clone per call:
/// never held across an await.
pub(super) struct Current<C> {
    connection: RwLock<Option<(u64, C)>>,
    generations: AtomicU64,
}

impl<C> Default for Current<C> {
    fn default() -> Self {
        Self {
            connection: RwLock::new(None),
            generations: AtomicU64::new(0),
        }
    }
}

impl<C: Clone> Current<C> {
    fn get(&self) -> Option<(u64, C)> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, connection: C) -> (u64, C) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let current = (generation, connection);
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(current.clone());
        current
    }

    /// The connection, or one made by `connect` (which must not wait).
    fn get_or(&self, connect: impl FnOnce() -> RedisResult<C>) -> RedisResult<(u64, C)> {
        match self.get() {
            Some(current) => Ok(current),
            None => Ok(self.set(connect()?)),
        }
    }

    /// The connection, or one `lookup` makes: one attempt at a time, none for a moment after
    /// one failed, each bounded in time.
    async fn get_or_look_up<L>(
        &self,
        lookup: &Lookup<L>,
        connect: impl FnOnce(&mut L) -> Connecting<'_, C>,
    ) -> RedisResult<(u64, C)> {
        if let Some(current) = self.get() {
            return Ok(current);
        }
        let mut state = lookup.state.lock().await;
        if let Some(current) = self.get() {
            return Ok(current); // another call connected while this one waited
        }
        if state.failed.is_some_and(|at| at.elapsed() < BACKOFF) {
            return Err(RedisError::from((
                ErrorKind::Io,
                "the version store was unreachable a moment ago",
            )));
        }
        let attempt = tokio::time::timeout(2 * TIMEOUT, connect(&mut state.client)).await;
        match attempt {
            Ok(Ok(connection)) => {
                state.failed = None;
                Ok(self.set(connection))
            }
            Ok(Err(err)) => {
                state.failed = Some(Instant::now());
                Err(err)
            }
            Err(_elapsed) => {
                state.failed = Some(Instant::now());
                Err(RedisError::from((
                    ErrorKind::Io,
                    "connecting to the version store timed out",
                )))
            }
        }
    }

    /// After a call on the connection of `generation`: forgets it if the call's error says it
    /// is `lost`, so the next call connects anew.
    fn forget_after<T>(
        &self,
        generation: u64,
        answer: &RedisResult<T>,
        lost: fn(&RedisError) -> bool,
    ) {
        if !answer.as_ref().err().is_some_and(lost) {
            return;
        }
        let mut connection = self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if connection.as_ref().is_some_and(|(g, _)| *g == generation) {
            *connection = None;
        }
    }
}

/// What finds a connection (a Sentinel client, a cluster client), used by one caller at a time.
pub(super) struct Lookup<L> {
    state: Mutex<LookupState<L>>,
}

struct LookupState<L> {
    client: L,
    /// When the last attempt failed.
    failed: Option<Instant>,
}

impl<L> Lookup<L> {
    fn new(client: L) -> Self {
        Self {
            state: Mutex::new(LookupState {
                client,
                failed: None,
            }),
        }
    }
}
