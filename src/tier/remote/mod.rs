//! The shared remote tier (G4): pages kept on a Valkey or Redis server, so that serving
//! processes on other hosts (or this one after a restart) find the prefixes this one computed.
//!
//! kvtier does not run its own distributed store: a G4 page is one binary value on the server,
//! under the key `kvtier:g4:<fingerprint>:<salt>:<block hash>` (hex), where the fingerprint
//! hashes the model id and KV layout ([`Fingerprint`](crate::tier::format::Fingerprint)) and the salt the tenant's salt. Each value
//! starts with a [`HEADER_BYTES`] header (magic, version, payload length, fingerprint, salt,
//! block hash, and an XXH3 check of the header and the page); a value whose header or check does
//! not match what was asked for is a miss, counted in [`RemoteMetrics::get_rejected`], and is
//! never delivered (a buffer it was read into is zeroed).
//!
//! The server owns eviction (`maxmemory-policy allkeys-lru`, or [`RemoteConfig::ttl`]): G4 is
//! lossy, a page found by a lookup may be gone when it is read, and kvtier never assumes it is
//! still there. Every call is one pipelined round trip per batch ([`RemoteConfig::max_batch_bytes`]
//! of values at most): a prefix lookup is one round trip of `EXISTS`.
//!
//! Failure is a miss, not an outage: a server that is down, slow (past
//! [`RemoteConfig::timeout`]), full, or refuses the credentials makes lookups and reads find
//! nothing and writes store nothing; no method returns an error for it. After a failure the tier
//! waits ([`RemoteConfig::backoff_min`], doubling up to [`RemoteConfig::backoff_max`]) before it
//! tries the server again, answering "miss" at once meanwhile; [`RemoteMetrics`] counts all of
//! it. Credentials come in the URL (`redis://user:password@host:port/db`); they are never
//! printed: `Debug` shows the URL with them redacted. `rediss://` (TLS) URLs need the `g4-tls`
//! feature (rustls, ring provider); the server is verified against the system's trust store
//! or the CAs given ([`RemoteConfig::with_tls_ca_pem`]).

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

#[cfg(feature = "g4")]
mod client;
#[cfg(feature = "g4")]
pub use client::RemoteTier;
#[cfg(not(feature = "g4"))]
mod absent;
#[cfg(feature = "g4")]
mod reader;
#[cfg(not(feature = "g4"))]
pub use absent::RemoteTier;

/// Bytes of the header in front of every G4 value.
pub const HEADER_BYTES: usize = 64;

/// Version of the value format.
pub const VALUE_VERSION: u32 = 1;

/// Which pages the engine stores in G4 ([`RemoteConfig::publish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Publish {
    /// Every page when G1 first copies it down to G2: other processes find a prefix as soon
    /// as this one gives it up from G1. The default.
    #[default]
    Offload,
    /// Every page leaving G2 (whether G3 admits it or not): G4 extends this process's own
    /// tiers and shares what they let go, later and with fewer writes.
    Spill,
}

/// Where the G4 tier is and how it behaves.
///
/// ```
/// use std::time::Duration;
/// use kvtier::tier::remote::RemoteConfig;
/// let config = RemoteConfig::new("redis://:secret@127.0.0.1:6379/0")
///     .with_model_id("llama-3.1-8b")
///     .with_tenant_salt(b"tenant-a")
///     .with_ttl(Some(Duration::from_secs(3600)));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `redis://[user][:password@]host[:port][/db]` (or `valkey://`). Never printed.
    pub url: String,
    /// Model identifier in the fingerprint: pages written under another never match.
    pub model_id: String,
    /// Tenant salt: tenants with different salts share no page. Default: empty.
    pub tenant_salt: Vec<u8>,
    /// Tensor-parallel rank and world size of this process (in the fingerprint). Default 0 of 1.
    pub tp_rank: u32,
    /// See [`RemoteConfig::tp_rank`].
    pub tp_size: u32,
    /// Connections kept open for reuse (more are opened if more threads call at once). Default 4.
    pub connections: usize,
    /// Connect, read and write timeout of one round trip. Default 250 ms.
    pub timeout: Duration,
    /// Expiry of stored pages on the server; `None` leaves eviction to its `maxmemory-policy`.
    pub ttl: Option<Duration>,
    /// First wait after a failure before the server is tried again. Default 10 ms.
    pub backoff_min: Duration,
    /// Longest wait between tries. Default 5 s.
    pub backoff_max: Duration,
    /// Value bytes in one pipelined round trip at most (reads and writes). Default 64 MiB.
    pub max_batch_bytes: usize,
    /// Which pages the engine stores in G4. Default [`Publish::Offload`].
    pub publish: Publish,
    /// For `rediss://` (feature `g4-tls`): PEM certificates of the CAs to trust instead of the
    /// system's. Default: none (the system's trust store).
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &redact(&self.url))
            .field("model_id", &self.model_id)
            .field("tenant_salt_len", &self.tenant_salt.len())
            .field("tp_rank", &self.tp_rank)
            .field("tp_size", &self.tp_size)
            .field("connections", &self.connections)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("publish", &self.publish)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// `url` with any user name and password replaced by `<redacted>`.
///
/// ```
/// use kvtier::tier::remote::redact;
/// assert_eq!(redact("redis://bob:pw@db:6379/1"), "redis://<redacted>@db:6379/1");
/// assert_eq!(redact("redis://db:6379"), "redis://db:6379");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl RemoteConfig {
    /// A G4 tier on the server at `url`, with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model_id: String::new(),
            tenant_salt: Vec::new(),
            tp_rank: 0,
            tp_size: 1,
            connections: 4,
            timeout: Duration::from_millis(250),
            ttl: None,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(5),
            max_batch_bytes: 64 << 20,
            publish: Publish::Offload,
            tls_ca_pem: None,
        }
    }

    /// Sets the model id of the fingerprint.
    pub fn with_model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }

    /// Sets the tenant salt.
    pub fn with_tenant_salt(mut self, salt: &[u8]) -> Self {
        self.tenant_salt = salt.to_vec();
        self
    }

    /// Sets the tensor-parallel rank and world size.
    pub fn with_tp(mut self, rank: u32, size: u32) -> Self {
        self.tp_rank = rank;
        self.tp_size = size;
        self
    }

    /// Sets the round-trip timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the expiry of stored pages.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the backoff after failures (first wait, longest wait).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Sets the value bytes per round trip.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Trusts the CAs in `pem` (PEM certificates) for `rediss://` instead of the system's.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Sets which pages the engine stores in G4.
    pub fn with_publish(mut self, publish: Publish) -> Self {
        self.publish = publish;
        self
    }

    /// Checks the configuration (not the server: an unreachable server is a miss).
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason| Err(Error::InvalidConfig { field, reason });
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis" | "valkey") => {}
            Some("rediss" | "valkeys") if !cfg!(feature = "g4-tls") => {
                return invalid("remote.url", "TLS (rediss://) needs kvtier's g4-tls feature");
            }
            Some("rediss" | "valkeys") => {}
            _ => return invalid("remote.url", "must be redis://host:port (or valkey://)"),
        }
        #[cfg(feature = "g4")]
        if redis::Client::open(self.url.as_str()).is_err() {
            return invalid("remote.url", "not a valid redis:// URL");
        }
        if self.tp_size == 0 || self.tp_rank >= self.tp_size {
            return invalid("remote.tp_rank", "must be below tp_size (>= 1)");
        }
        if self.connections == 0 {
            return invalid("remote.connections", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("remote.timeout", "must be positive");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return invalid("remote.backoff", "needs 0 < min <= max");
        }
        if self.ttl.is_some_and(|t| t.as_millis() == 0) {
            return invalid("remote.ttl", "must be at least 1 ms");
        }
        if self.max_batch_bytes == 0 {
            return invalid("remote.max_batch_bytes", "must be positive");
        }
        Ok(())
    }
}

/// G4's counters. Everything that went wrong is here, since no call returns it as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteMetrics {
    /// Lookups (prefix or key set) asked of the server (not counting those skipped while it
    /// is down).
    pub lookups: u64,
    /// Keys those lookups found.
    pub lookup_found: u64,
    /// Pipelined round trips to the server.
    pub round_trips: u64,
    /// Pages asked for by reads.
    pub gets: u64,
    /// Pages delivered, verified.
    pub get_hits: u64,
    /// Pages the server did not have (evicted, expired, never stored).
    pub get_absent: u64,
    /// Values that failed verification (header, fingerprint, salt, hash, length or checksum).
    pub get_rejected: u64,
    /// Payload bytes delivered.
    pub get_bytes: u64,
    /// Pages sent to be stored.
    pub puts: u64,
    /// Pages the server stored.
    pub put_stored: u64,
    /// Pages the server refused (full with `noeviction`, or another error reply).
    pub put_rejected: u64,
    /// Payload bytes stored.
    pub put_bytes: u64,
    /// Failed round trips or connection attempts (refused, reset, protocol, auth, timeout).
    pub errors: u64,
    /// Of those, timeouts.
    pub timeouts: u64,
    /// Of those, authentication failures.
    pub auth_failures: u64,
    /// Connections opened.
    pub connects: u64,
    /// Calls answered "miss" (or not stored) without trying, during a backoff.
    pub skipped_down: u64,
    /// Whether the last attempt reached the server.
    pub up: bool,
}
