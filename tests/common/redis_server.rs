//! A throwaway Valkey/Redis server for the G4 tests: its own process on a free port of
//! 127.0.0.1, no persistence, killed on drop.
//!
//! The binary is `$KVTIER_REDIS_SERVER`, else `redis-server` or `valkey-server` on the PATH.
//! Without one, [`RedisServer::start`] returns `None` and the test says it was skipped, unless
//! `KVTIER_REQUIRE_REDIS=1` (set by `.ci/run`, which installs the server), where it fails.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDir;

/// A running server (see the module docs).
#[derive(Debug)]
pub struct RedisServer {
    binary: String,
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    dir: TestDir,
    /// Serves TLS only (`rediss://`), with a certificate of the test CA in `dir`.
    tls: bool,
}

fn binary() -> Option<String> {
    if let Ok(b) = std::env::var("KVTIER_REDIS_SERVER") {
        return Some(b);
    }
    ["redis-server", "valkey-server"].into_iter().map(String::from).find(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    })
}

impl RedisServer {
    /// Starts a server with `args` (e.g. `["--maxmemory", "2mb"]`) added to its command line;
    /// `None` when there is no server binary and none is required.
    pub fn start(args: &[&str]) -> Option<Self> {
        let mut s = Self::start_unstarted()?;
        s.args = args.iter().map(|a| a.to_string()).collect();
        s.listen()
    }

    /// A server that speaks TLS only, its certificate (for 127.0.0.1) signed by a CA made for
    /// it with the `openssl` command; returns the CA's PEM too. `None` as for
    /// [`RedisServer::start`], or when there is no `openssl`.
    pub fn start_tls() -> Option<(Self, Vec<u8>)> {
        let mut s = Self::start_unstarted()?;
        let d = s.dir.path().to_path_buf();
        let openssl = |args: &[&str]| {
            Command::new("openssl").args(args).current_dir(&d).stdout(Stdio::null()).stderr(Stdio::null()).status()
        };
        let made = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=kvtier-test-ca",
            ][..],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .iter()
        .all(|a| openssl(a).is_ok_and(|st| st.success()));
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext.cnf");
        let signed = made
            && openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ])
            .is_ok_and(|st| st.success());
        if !signed {
            assert!(
                std::env::var("KVTIER_REQUIRE_REDIS").as_deref() != Ok("1"),
                "KVTIER_REQUIRE_REDIS=1 but openssl could not make test certificates"
            );
            eprintln!("skipped: no openssl to make test certificates");
            return None;
        }
        s.tls = true;
        let ca = std::fs::read(d.join("ca.crt")).expect("read ca.crt");
        Some((s.listen()?, ca))
    }

    /// The server's state before it listens: binary and scratch directory.
    fn start_unstarted() -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var("KVTIER_REQUIRE_REDIS").as_deref() != Ok("1"),
                "KVTIER_REQUIRE_REDIS=1 but no redis-server or valkey-server (install one, or set KVTIER_REDIS_SERVER)"
            );
            eprintln!("skipped: no redis-server or valkey-server on this machine");
            return None;
        };
        let s = Self { binary, child: None, port: 0, args: Vec::new(), dir: TestDir::new("redis"), tls: false };
        std::fs::create_dir_all(s.dir.path()).expect("scratch dir");
        Some(s)
    }

    /// Starts the process on a free port (a few tries: a port can be taken meanwhile).
    fn listen(mut self) -> Option<Self> {
        let s = &mut self;
        for _ in 0..8 {
            s.port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            if s.spawn() {
                return Some(self);
            }
        }
        panic!("redis server did not start");
    }

    /// Starts the server process on `self.port`; whether it answers PING within 5 s.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let listen: Vec<&str> = match self.tls {
            false => vec!["--port", &port],
            true => vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.crt",
                "--tls-auth-clients",
                "no",
            ],
        };
        let child = Command::new(&self.binary)
            .args(&listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the redis server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: most likely the port was taken meanwhile
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    fn ping(&self) -> bool {
        if self.tls {
            // listening is enough: the test's own client does the TLS handshake
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let password = self.args.iter().position(|a| a == "--requirepass").and_then(|i| self.args.get(i + 1));
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "rediss" } else { "redis" }, self.port)
    }

    /// A plain client connection (for planting values and inspecting the server).
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).and_then(|c| c.get_connection()).expect("connect to the test server")
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis server did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
