//! Page reads over a plain TCP connection, with the replies parsed here.
//!
//! The `redis` crate parses every reply into an owned `Value`: a 2 MiB page was read from the
//! socket in small pieces, gathered into a new vector, then copied into the caller's buffer.
//! Measured on loopback with 8 pipelined 2 MiB GETs, that parser delivered a third of what
//! reading the same replies straight into one buffer did (317 vs 1,049 values/s). So pipelined
//! GETs of pages go over connections of this module: the command is the crate-independent RESP
//! of `pack_command`, and each bulk reply's header goes into a 64-byte array and its page
//! straight into the caller's buffer. Everything else (lookups, writes, and reads over TLS or
//! a Unix socket) stays on the crate's connections.
//!
//! Only what a `GET` can answer is understood: a bulk string (`$<len>`), a nil (`$-1`) and an
//! error line (`-...`). Anything else ends the connection, as the crate's parser would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::HEADER_BYTES;

/// Why a read round trip failed; the connection is not reused after any of these.
#[derive(Debug)]
pub(super) enum ReadError {
    Io(io::Error),
    /// The server answered something a `GET` (or `AUTH` / `SELECT`) never does.
    Protocol,
    /// The server refused the credentials, or wants some and none were given.
    Auth,
}

impl ReadError {
    pub(super) fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Where and as whom to connect (from the tier's URL).
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
    pub(super) timeout: Duration,
}

/// One reply to a `GET`, as far as the caller needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// The value was `HEADER_BYTES` + the page's length: the header is given, the page was
    /// read into the caller's buffer (to be verified).
    Page([u8; HEADER_BYTES]),
    /// No such key.
    Absent,
    /// A value of another length (read and dropped; the caller's buffer untouched), or an
    /// error reply.
    Other,
}

/// A plain TCP connection used for pipelined page reads.
pub(super) struct PageConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl PageConn {
    /// Connects (within the endpoint's timeout), authenticates and selects the database.
    pub(super) fn connect(e: &Endpoint) -> Result<Self, ReadError> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolved to no address");
        let mut stream = None;
        for addr in (e.host.as_str(), e.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, e.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(err) => last = err,
            }
        }
        let stream = stream.ok_or(last)?;
        // Pipelines are written whole, then read: no Nagle delay on the last segment.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(e.timeout))?;
        stream.set_write_timeout(Some(e.timeout))?;
        let writer = stream.try_clone()?;
        // large enough that reply lines and headers come in few reads; pages bypass it
        let mut conn = Self { reader: BufReader::with_capacity(64 << 10, stream), writer, line: Vec::new() };
        if let Some(password) = &e.password {
            let mut cmd = Vec::new();
            match &e.username {
                Some(user) => {
                    super::client::pack_command(&mut cmd, &[&[b"AUTH"], &[user.as_bytes()], &[password.as_bytes()]])
                }
                None => super::client::pack_command(&mut cmd, &[&[b"AUTH"], &[password.as_bytes()]]),
            }
            conn.simple(&cmd).map_err(|err| match err {
                ReadError::Protocol => ReadError::Auth,
                other => other,
            })?;
        }
        if e.db != 0 {
            let mut cmd = Vec::new();
            super::client::pack_command(&mut cmd, &[&[b"SELECT"], &[e.db.to_string().as_bytes()]]);
            conn.simple(&cmd)?;
        }
        Ok(conn)
    }

    /// Sends one command and expects `+OK`.
    fn simple(&mut self, cmd: &[u8]) -> Result<(), ReadError> {
        self.writer.write_all(cmd)?;
        self.read_line()?;
        match self.line.as_slice() {
            b"+OK" => Ok(()),
            [b'-', rest @ ..] if rest.starts_with(b"NOAUTH") || rest.starts_with(b"WRONGPASS") => Err(ReadError::Auth),
            _ => Err(ReadError::Protocol),
        }
    }

    /// Reads one reply line into `self.line`, without its CRLF.
    fn read_line(&mut self) -> Result<(), ReadError> {
        self.line.clear();
        let n = (&mut self.reader).take(4096).read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(ReadError::Protocol);
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    /// Sends `packed` (`dst.len()` pipelined GETs) and reads the replies in order: reply `i`'s
    /// page goes into `dst[i]` when its length is right. `Err` if the connection failed or the
    /// server broke the protocol; the replies read before are in `out` (and the buffers of the
    /// rest may have been written to partly: the caller treats them as unread).
    pub(super) fn get_pages(
        &mut self,
        packed: &[u8],
        dst: &mut [&mut [u8]],
        out: &mut Vec<Reply>,
    ) -> Result<(), ReadError> {
        out.clear();
        self.writer.write_all(packed)?;
        for page in dst.iter_mut() {
            self.read_line()?;
            let reply = match self.line.first() {
                Some(b'-') => Reply::Other,
                Some(b'$') if self.line.as_slice() == b"$-1" => Reply::Absent,
                Some(b'$') => {
                    let len: usize = std::str::from_utf8(&self.line[1..])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(ReadError::Protocol)?;
                    if len == HEADER_BYTES + page.len() {
                        let mut head = [0u8; HEADER_BYTES];
                        self.reader.read_exact(&mut head)?;
                        // a read this large bypasses the buffer: socket to page, one copy
                        self.reader.read_exact(page)?;
                        self.crlf()?;
                        Reply::Page(head)
                    } else {
                        let skipped = io::copy(&mut (&mut self.reader).take(len as u64), &mut io::sink())?;
                        if skipped != len as u64 {
                            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
                        }
                        self.crlf()?;
                        Reply::Other
                    }
                }
                _ => return Err(ReadError::Protocol),
            };
            out.push(reply);
        }
        Ok(())
    }

    fn crlf(&mut self) -> Result<(), ReadError> {
        let mut end = [0u8; 2];
        self.reader.read_exact(&mut end)?;
        if end == *b"\r\n" { Ok(()) } else { Err(ReadError::Protocol) }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A fake server that reads whatever comes and answers `script` once, then closes.
    fn serve(script: Vec<u8>) -> (Endpoint, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            got.truncate(n);
            s.write_all(&script).unwrap();
            got
        });
        let e = Endpoint {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            db: 0,
            timeout: Duration::from_secs(5),
        };
        (e, h)
    }

    fn bulk(v: &[u8]) -> Vec<u8> {
        let mut b = format!("${}\r\n", v.len()).into_bytes();
        b.extend_from_slice(v);
        b.extend_from_slice(b"\r\n");
        b
    }

    #[test]
    fn replies_are_pages_absent_or_other_in_order() {
        let page = 16;
        let mut value = vec![1u8; HEADER_BYTES];
        value.extend(vec![9u8; page]);
        let mut script = bulk(&value);
        script.extend_from_slice(b"$-1\r\n");
        script.extend(bulk(&[5u8; 3])); // wrong length
        script.extend_from_slice(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        script.extend(bulk(&value));
        let (e, server) = serve(script);
        let mut conn = PageConn::connect(&e).unwrap();
        let mut bufs = vec![vec![0u8; page]; 5];
        let mut dst: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut out = Vec::new();
        conn.get_pages(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n", &mut dst, &mut out).unwrap();
        let head = [1u8; HEADER_BYTES];
        assert_eq!(out, [Reply::Page(head), Reply::Absent, Reply::Other, Reply::Other, Reply::Page(head)]);
        assert_eq!((bufs[0].as_slice(), bufs[4].as_slice()), (&[9u8; 16][..], &[9u8; 16][..]));
        assert_eq!(bufs[2], vec![0u8; page], "a value of another length is not written anywhere");
        assert_eq!(server.join().unwrap(), b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
    }

    #[test]
    fn a_broken_reply_or_a_closed_connection_is_an_error() {
        for script in [&b"*1\r\n"[..], b"$abc\r\n", b"$20\r\nshort", b"$-1\n", b""] {
            let (e, _server) = serve(script.to_vec());
            let mut conn = PageConn::connect(&e).unwrap();
            let mut buf = vec![0u8; 4];
            let mut out = Vec::new();
            let r = conn.get_pages(b"x", &mut [buf.as_mut_slice()], &mut out);
            assert!(r.is_err(), "{:?} gave {out:?}", String::from_utf8_lossy(script));
        }
    }

    #[test]
    fn refused_credentials_are_an_auth_error() {
        let (mut e, server) = serve(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec());
        e.password = Some("hunter2".into());
        assert!(matches!(PageConn::connect(&e), Err(ReadError::Auth)));
        assert_eq!(server.join().unwrap(), b"*2\r\n$4\r\nAUTH\r\n$7\r\nhunter2\r\n");
    }
}
