//! The G4 client on the `redis` crate (feature `g4`).

use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, IntoConnectionInfo, RedisResult, Value};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, xxh3_128};

use super::reader::{Endpoint, PageConn, ReadError, Reply};
use super::{HEADER_BYTES, RemoteConfig, RemoteMetrics, VALUE_VERSION};
use crate::error::{Error, Result};
use crate::layout::KvLayout;
use crate::prefix::BlockHash;
use crate::sync::{Mutex, lock};
use crate::tier::disk::format::Fingerprint;

/// When to try the server again.
#[derive(Debug)]
struct Health {
    /// No attempt before this instant (set after a failure).
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The G4 tier: a client of one Valkey/Redis server (see the module docs). `Send + Sync`;
/// concurrent calls use separate pooled connections.
pub struct RemoteTier {
    client: redis::Client,
    config: RemoteConfig,
    fingerprint: u128,
    salt: u64,
    page_bytes: usize,
    key_prefix: String,
    idle: Mutex<Vec<Connection>>,
    /// Where page reads connect without the crate (plain TCP URLs; `None` for TLS and Unix
    /// sockets, whose reads go through the crate): see `reader.rs`.
    endpoint: Option<Endpoint>,
    /// Idle connections for those reads.
    page_conns: Mutex<Vec<PageConn>>,
    /// Write buffers kept for reuse (one per concurrent writer).
    buffers: Mutex<Vec<Vec<u8>>>,
    health: Mutex<Health>,
    metrics: Mutex<RemoteMetrics>,
}

impl fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTier")
            .field("config", &self.config)
            .field("key_prefix", &self.key_prefix)
            .field("page_bytes", &self.page_bytes)
            .finish_non_exhaustive()
    }
}

const MAGIC: [u8; 8] = *b"KVTIERG4";

/// The fingerprint hash that names a G4 keyspace: model id, layout and TP shard.
fn fingerprint_hash(fp: &Fingerprint) -> u128 {
    let mut b = Vec::with_capacity(64 + fp.model_id.len());
    for v in [fp.hash_version, fp.layers, fp.kv_heads, fp.head_dim, fp.block_size, fp.tp_rank, fp.tp_size] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(fp.dtype_tag);
    b.extend_from_slice(&fp.page_bytes.to_le_bytes());
    b.extend_from_slice(fp.model_id.as_bytes());
    xxh3_128(&b)
}

/// The header of the value of page `hash` with content `page`.
fn header(fingerprint: u128, salt: u64, hash: BlockHash, page: &[u8]) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VALUE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(page.len() as u32).to_le_bytes());
    h[16..32].copy_from_slice(&fingerprint.to_le_bytes());
    h[32..40].copy_from_slice(&salt.to_le_bytes());
    h[40..56].copy_from_slice(&hash.0.to_le_bytes());
    let check = xxh3_64_with_seed(page, xxh3_64(&h[..56]));
    h[56..64].copy_from_slice(&check.to_le_bytes());
    h
}

/// The client for `info`: plain, or (feature `g4-tls`) TLS with the configured CAs.
#[cfg(feature = "g4-tls")]
fn open_client(info: redis::ConnectionInfo, config: &RemoteConfig) -> RedisResult<redis::Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // the process has no rustls provider yet (an application that set one keeps it);
        // losing a race with another thread installing one is fine
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &config.tls_ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
        ),
        None => redis::Client::open(info),
    }
}

/// The client for `info`.
#[cfg(not(feature = "g4-tls"))]
fn open_client(info: redis::ConnectionInfo, _config: &RemoteConfig) -> RedisResult<redis::Client> {
    redis::Client::open(info)
}

/// Appends one RESP command of `args` (each argument the concatenation of its parts) to `out`:
/// the page goes into the buffer once, and the buffer is reused from call to call.
pub(super) fn pack_command(out: &mut Vec<u8>, args: &[&[&[u8]]]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for parts in args {
        let _ = write!(out, "${}\r\n", parts.iter().map(|p| p.len()).sum::<usize>());
        for p in *parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl RemoteTier {
    /// A G4 tier for pages of `layout`. Checks the configuration, not the server: a server
    /// that is down now is a miss until it is up.
    pub fn open(layout: &KvLayout, config: RemoteConfig) -> Result<Self> {
        config.validate()?;
        let bad_url = |_| Error::InvalidConfig { field: "remote.url", reason: "not a valid redis:// URL" };
        // Pipelines are written whole and then read: Nagle's algorithm would hold a batch's last
        // segment back for the server's delayed ack (22 ms round trips at 64 KiB pages).
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(bad_url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let endpoint = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Some(Endpoint {
                host: host.clone(),
                port: *port,
                username: info.redis_settings().username().map(str::to_string),
                password: info.redis_settings().password().map(str::to_string),
                db: info.redis_settings().db(),
                timeout: config.timeout,
            }),
            _ => None,
        };
        let client = open_client(info, &config).map_err(bad_url)?;
        let fp = Fingerprint::new(&config.model_id, layout, config.tp_rank, config.tp_size);
        let fingerprint = fingerprint_hash(&fp);
        let salt = xxh3_64(&config.tenant_salt);
        let key_prefix = format!("kvtier:g4:{fingerprint:032x}:{salt:016x}:");
        Ok(Self {
            client,
            fingerprint,
            salt,
            page_bytes: layout.page_bytes(),
            key_prefix,
            idle: Mutex::new(Vec::new()),
            endpoint,
            page_conns: Mutex::new(Vec::new()),
            buffers: Mutex::new(Vec::new()),
            health: Mutex::new(Health { retry_at: None, backoff: config.backoff_min }),
            metrics: Mutex::new(RemoteMetrics::default()),
            config,
        })
    }

    /// The server key of page `h` in this tier's keyspace (for tools and tests).
    pub fn key(&self, h: BlockHash) -> String {
        format!("{}{:032x}", self.key_prefix, h.0)
    }

    /// Bytes of one page.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// The counters.
    pub fn metrics(&self) -> RemoteMetrics {
        lock(&self.metrics).clone()
    }

    /// How many leading `hashes` the server holds, in one round trip (0 if it cannot be asked).
    pub fn contains_prefix(&self, hashes: &[BlockHash]) -> usize {
        self.contains_each(hashes).iter().take_while(|found| **found).count()
    }

    /// Which of `hashes` the server holds, in one round trip (all false if it cannot be asked).
    pub fn contains_each(&self, hashes: &[BlockHash]) -> Vec<bool> {
        if hashes.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        for &h in hashes {
            pipe.cmd("EXISTS").arg(self.key(h));
        }
        let found = self.round_trip(|con| pipe.query::<Vec<i64>>(con));
        let found = found
            .filter(|v| v.len() == hashes.len())
            .map_or_else(|| vec![false; hashes.len()], |v| v.iter().map(|&n| n > 0).collect());
        let mut m = lock(&self.metrics);
        if m.up {
            m.lookups += 1;
            m.lookup_found += found.iter().filter(|x| **x).count() as u64;
        }
        found
    }

    /// Reads pages into the given buffers (each exactly one page long); returns, per page,
    /// whether a verified page was delivered. A buffer whose page is absent or was not read is
    /// left as it was; one that received a value failing verification, or part of a value
    /// before the connection failed, is zeroed: no buffer is ever left holding unverified
    /// bytes. Over plain TCP, values go from the socket straight into the buffers (one copy;
    /// see `reader.rs`); over TLS and Unix sockets through the `redis` crate's parser.
    pub fn get_pages(&self, reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<bool> {
        match &self.endpoint {
            Some(endpoint) => self.get_pages_direct(endpoint, reqs),
            None => self.get_pages_parsed(reqs),
        }
    }

    /// `get_pages` over the crate's connections (TLS, Unix sockets).
    fn get_pages_parsed(&self, reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<bool> {
        let mut ok = vec![false; reqs.len()];
        let per_trip = (self.config.max_batch_bytes / (self.page_bytes + HEADER_BYTES)).max(1);
        let mut start = 0;
        while start < reqs.len() {
            let end = (start + per_trip).min(reqs.len());
            let chunk = &mut reqs[start..end];
            let mut pipe = redis::pipe();
            for (h, _) in chunk.iter() {
                pipe.cmd("GET").arg(self.key(*h));
            }
            let (mut hits, mut absent, mut rejected) = (0u64, 0u64, 0u64);
            match self.round_trip(|con| pipe.query::<Vec<Value>>(con)) {
                Some(values) => {
                    for ((i, (h, dst)), v) in chunk.iter_mut().enumerate().zip(values) {
                        match v {
                            Value::BulkString(bytes) => {
                                if self.verify(*h, &bytes, dst.len()) {
                                    dst.copy_from_slice(&bytes[HEADER_BYTES..]);
                                    ok[start + i] = true;
                                    hits += 1;
                                } else {
                                    rejected += 1;
                                }
                            }
                            Value::Nil => absent += 1,
                            _ => rejected += 1,
                        }
                    }
                }
                None => {
                    // a failed round trip: every page of the chunk is a miss; the rest are not
                    // tried until the backoff ends
                    self.count_gets(chunk.len(), 0, chunk.len() as u64, 0);
                    start = end;
                    continue;
                }
            }
            self.count_gets(chunk.len(), hits, absent, rejected);
            start = end;
        }
        ok
    }

    /// `get_pages` over plain TCP with replies read straight into the buffers (`reader.rs`).
    /// A value that fails verification was read into its buffer, which is then zeroed.
    fn get_pages_direct(&self, endpoint: &Endpoint, reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<bool> {
        let mut ok = vec![false; reqs.len()];
        let per_trip = (self.config.max_batch_bytes / (self.page_bytes + HEADER_BYTES)).max(1);
        let mut replies = Vec::with_capacity(per_trip.min(reqs.len()));
        let mut packed = lock(&self.buffers).pop().unwrap_or_default();
        for (first, chunk) in reqs.chunks_mut(per_trip).enumerate().map(|(c, chunk)| (c * per_trip, chunk)) {
            packed.clear();
            for (h, _) in chunk.iter() {
                pack_command(&mut packed, &[&[b"GET"], &[self.key(*h).as_bytes()]]);
            }
            let hashes: Vec<BlockHash> = chunk.iter().map(|(h, _)| *h).collect();
            let mut dst: Vec<&mut [u8]> = chunk.iter_mut().map(|(_, d)| &mut **d).collect();
            let done = self
                .on_pool(
                    &self.page_conns,
                    || PageConn::connect(endpoint),
                    |c| c.get_pages(&packed, &mut dst, &mut replies),
                )
                .is_some();
            if !done && let Some(partial) = dst.get_mut(replies.len()) {
                // the reply being read when the connection failed may have filled part of it
                partial.fill(0);
            }
            let (mut hits, mut absent, mut rejected) = (0u64, 0u64, 0u64);
            for (i, reply) in replies.iter().enumerate() {
                match reply {
                    Reply::Page(head) => {
                        if *head == header(self.fingerprint, self.salt, hashes[i], dst[i]) {
                            ok[first + i] = true;
                            hits += 1;
                        } else {
                            dst[i].fill(0);
                            rejected += 1;
                        }
                    }
                    Reply::Absent => absent += 1,
                    Reply::Other => rejected += 1,
                }
            }
            // pages a failed round trip did not deliver count as absent, as in the crate path
            self.count_gets(chunk.len(), hits, absent + (chunk.len() - replies.len()) as u64, rejected);
        }
        lock(&self.buffers).push(packed);
        ok
    }

    /// Counts one round trip's worth of page reads in the metrics.
    fn count_gets(&self, pages: usize, hits: u64, absent: u64, rejected: u64) {
        let mut m = lock(&self.metrics);
        m.gets += pages as u64;
        m.get_hits += hits;
        m.get_absent += absent;
        m.get_rejected += rejected;
        m.get_bytes += hits * self.page_bytes as u64;
    }

    /// Stores pages (each exactly one page long, else refused); returns, per page, whether the
    /// server took it. A server that is down or full stores nothing and says so only here and
    /// in the metrics.
    pub fn put_pages(&self, pages: &[(BlockHash, &[u8])]) -> Vec<bool> {
        let mut ok = vec![false; pages.len()];
        let per_trip = (self.config.max_batch_bytes / (self.page_bytes + HEADER_BYTES)).max(1);
        let ttl_ms = self.config.ttl.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        let mut start = 0;
        while start < pages.len() {
            let end = (start + per_trip).min(pages.len());
            let mut packed = lock(&self.buffers).pop().unwrap_or_default();
            packed.clear();
            let mut sent = Vec::with_capacity(end - start);
            let ttl = ttl_ms.map(|ms| ms.to_string());
            for (i, &(h, page)) in pages[start..end].iter().enumerate() {
                if page.len() != self.page_bytes {
                    continue;
                }
                let head = header(self.fingerprint, self.salt, h, page);
                let key = self.key(h);
                match &ttl {
                    Some(ms) => pack_command(
                        &mut packed,
                        &[&[b"SET"], &[key.as_bytes()], &[&head, page], &[b"PX"], &[ms.as_bytes()]],
                    ),
                    None => pack_command(&mut packed, &[&[b"SET"], &[key.as_bytes()], &[&head, page]]),
                }
                sent.push(start + i);
            }
            if sent.is_empty() {
                start = end;
                continue;
            }
            let replies = self.round_trip(|con| con.req_packed_commands(&packed, 0, sent.len()));
            lock(&self.buffers).push(packed);
            let mut m = lock(&self.metrics);
            m.puts += sent.len() as u64;
            if let Some(replies) = replies {
                for (&i, r) in sent.iter().zip(replies) {
                    if matches!(r, Value::Okay) {
                        ok[i] = true;
                        m.put_stored += 1;
                        m.put_bytes += self.page_bytes as u64;
                    } else {
                        m.put_rejected += 1;
                    }
                }
            }
            start = end;
        }
        ok
    }

    /// Whether `value` is the verified page `h` of this keyspace, `len` bytes long.
    fn verify(&self, h: BlockHash, value: &[u8], len: usize) -> bool {
        if value.len() != HEADER_BYTES + len || len != self.page_bytes {
            return false;
        }
        let (head, page) = value.split_at(HEADER_BYTES);
        // the header this tier would have written for these bytes: any difference (magic,
        // version, length, fingerprint, salt, hash or check) rejects the value
        head == header(self.fingerprint, self.salt, h, page)
    }

    /// Runs one round trip on a pooled connection. `None` if the server could not be asked
    /// (down, in backoff, timeout, auth, protocol error); the failure is counted and starts or
    /// extends the backoff.
    fn round_trip<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Option<T> {
        self.on_pool(&self.idle, || self.connect(), f)
    }

    /// Runs `f` on a connection of `pool` (or a new one from `connect`), counting and backing
    /// off on failure like [`RemoteTier::round_trip`].
    fn on_pool<C, T, E: Failure>(
        &self,
        pool: &Mutex<Vec<C>>,
        connect: impl FnOnce() -> Result<C, E>,
        f: impl FnOnce(&mut C) -> Result<T, E>,
    ) -> Option<T> {
        {
            let health = lock(&self.health);
            if health.retry_at.is_some_and(|t| Instant::now() < t) {
                lock(&self.metrics).skipped_down += 1;
                return None;
            }
        }
        let pooled = lock(pool).pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                lock(&self.metrics).connects += 1;
                match connect() {
                    Ok(c) => c,
                    Err(e) => {
                        self.failed(&e);
                        return None;
                    }
                }
            }
        };
        match f(&mut con) {
            Ok(v) => {
                {
                    let mut idle = lock(pool);
                    if idle.len() < self.config.connections {
                        idle.push(con);
                    }
                }
                let mut health = lock(&self.health);
                health.retry_at = None;
                health.backoff = self.config.backoff_min;
                drop(health);
                let mut m = lock(&self.metrics);
                m.round_trips += 1;
                m.up = true;
                Some(v)
            }
            Err(e) => {
                // the connection may be mid-reply: never reused
                drop(con);
                self.failed(&e);
                None
            }
        }
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.config.timeout)?;
        con.set_read_timeout(Some(self.config.timeout))?;
        con.set_write_timeout(Some(self.config.timeout))?;
        Ok(con)
    }

    /// Counts a failure and backs off; the pooled connections are dropped too (a server that
    /// went away took them with it).
    fn failed(&self, e: &impl Failure) {
        lock(&self.idle).clear();
        lock(&self.page_conns).clear();
        {
            let mut health = lock(&self.health);
            health.retry_at = Some(Instant::now() + health.backoff);
            health.backoff = (health.backoff * 2).min(self.config.backoff_max);
        }
        let mut m = lock(&self.metrics);
        m.errors += 1;
        m.up = false;
        if e.timed_out() {
            m.timeouts += 1;
        }
        if e.refused_credentials() {
            m.auth_failures += 1;
        }
    }
}

/// What the metrics tell apart about a failed round trip.
trait Failure {
    fn timed_out(&self) -> bool;
    fn refused_credentials(&self) -> bool;
}

impl Failure for redis::RedisError {
    fn timed_out(&self) -> bool {
        self.is_timeout()
    }
    fn refused_credentials(&self) -> bool {
        self.kind() == redis::ErrorKind::AuthenticationFailed
    }
}

impl Failure for ReadError {
    fn timed_out(&self) -> bool {
        self.is_timeout()
    }
    fn refused_credentials(&self) -> bool {
        matches!(self, ReadError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::layout::Dtype;

    fn tier(url: &str, model: &str, salt: &[u8]) -> RemoteTier {
        let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4).unwrap();
        RemoteTier::open(&layout, RemoteConfig::new(url).with_model_id(model).with_tenant_salt(salt)).unwrap()
    }

    #[test]
    fn a_value_verifies_only_in_its_own_keyspace_and_key() {
        let a = tier("redis://127.0.0.1:1", "m", b"a");
        let page = vec![7u8; a.page_bytes()];
        let mut value = header(a.fingerprint, a.salt, BlockHash(5), &page).to_vec();
        value.extend_from_slice(&page);
        assert!(a.verify(BlockHash(5), &value, page.len()));
        assert!(!a.verify(BlockHash(6), &value, page.len()), "another block's key");
        assert!(!tier("redis://127.0.0.1:1", "m", b"b").verify(BlockHash(5), &value, page.len()), "another tenant");
        assert!(!tier("redis://127.0.0.1:1", "n", b"a").verify(BlockHash(5), &value, page.len()), "another model");
        for i in [0, 9, 20, 60, HEADER_BYTES, value.len() - 1] {
            let mut bad = value.clone();
            bad[i] ^= 1;
            assert!(!a.verify(BlockHash(5), &bad, page.len()), "byte {i} flipped");
        }
        assert!(!a.verify(BlockHash(5), &value[..value.len() - 1], page.len()), "truncated");
    }

    #[test]
    fn keyspaces_differ_by_model_and_salt() {
        let k = |m, s| tier("redis://127.0.0.1:1", m, s).key(BlockHash(1));
        assert_ne!(k("m", b"a"), k("m", b"b"));
        assert_ne!(k("m", b"a"), k("n", b"a"));
        assert_eq!(k("m", b"a"), k("m", b"a"));
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        for (url, field) in [("http://x", "remote.url"), ("redis://", "remote.url")] {
            assert_eq!(RemoteConfig::new(url).validate().err().and_then(|e| e.config_field()), Some(field), "{url}");
        }
        assert!(RemoteConfig::new("redis://h:1").with_tp(1, 1).validate().is_err());
        assert!(RemoteConfig::new("redis://h:1").with_timeout(Duration::ZERO).validate().is_err());
        assert!(RemoteConfig::new("redis://h:1").with_ttl(Some(Duration::from_micros(10))).validate().is_err());
        assert!(RemoteConfig::new("valkey://h:1").validate().is_ok());
        // TLS is there exactly when the feature is
        assert_eq!(RemoteConfig::new("rediss://h:1").validate().is_ok(), cfg!(feature = "g4-tls"));
    }

    #[test]
    fn a_server_that_is_not_there_is_a_miss_and_backs_off() {
        // port 1 on localhost: connection refused at once; a backoff no run (valgrind
        // included) outlasts, so the next two calls fall inside it
        let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4).unwrap();
        let config =
            RemoteConfig::new("redis://127.0.0.1:1").with_backoff(Duration::from_secs(60), Duration::from_secs(60));
        let t = RemoteTier::open(&layout, config).unwrap();
        assert_eq!(t.contains_prefix(&[BlockHash(1)]), 0);
        let mut buf = vec![0u8; t.page_bytes()];
        assert_eq!(t.get_pages(&mut [(BlockHash(1), &mut buf)]), vec![false]);
        let page = vec![1u8; t.page_bytes()];
        assert_eq!(t.put_pages(&[(BlockHash(1), &page)]), vec![false]);
        let m = t.metrics();
        assert_eq!(m.errors, 1, "{m:?}");
        assert_eq!(m.skipped_down, 2, "tried again only after the backoff: {m:?}");
        assert!(!m.up);
    }
}
