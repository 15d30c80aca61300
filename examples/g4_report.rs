//! G4 throughput against the server's own benchmark: kvtier's pipelined page writes and reads
//! (`RemoteTier::put_pages` / `get_pages`, with the header, checksum and verification) beside
//! `redis-benchmark` SET/GET of the same value size, pipeline depth and one connection, on the
//! same server, interleaved in one run. The ratio is what kvtier's client costs over the wire
//! protocol itself (goal: >= 0.8).
//!
//! ```text
//! cargo run --release --example g4_report [-- --url redis://127.0.0.1:6379] [--quick]
//! ```
//! Without `--url` it starts a throwaway `redis-server` (or `valkey-server`) on a free port and
//! stops it at the end. Needs `redis-benchmark` (or `valkey-benchmark`) beside the server.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvtier::tier::remote::{HEADER_BYTES, RemoteConfig, RemoteTier};
use kvtier::{BlockHash, Dtype, KvLayout};

struct Server {
    child: Option<Child>,
    host: String,
    port: u16,
    benchmark: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn found(bin: &str) -> bool {
    Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn server(url: Option<String>) -> Result<Server, String> {
    let (server_bin, benchmark) = if found("valkey-server") && found("valkey-benchmark") {
        ("valkey-server", "valkey-benchmark")
    } else {
        ("redis-server", "redis-benchmark")
    };
    if !found(benchmark) {
        return Err(format!("{benchmark} not found (install redis-server or valkey-server)"));
    }
    if let Some(url) = url {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
        let port = port.parse().map_err(|_| format!("bad port in {url}"))?;
        return Ok(Server { child: None, host: host.to_string(), port, benchmark: benchmark.to_string() });
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let child = Command::new(server_bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{server_bin}: {e}"))?;
    let s = Server { child: Some(child), host: "127.0.0.1".into(), port, benchmark: benchmark.to_string() };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{server_bin} did not start on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(s)
}

/// Stores the keys `redis-benchmark -r n` draws from (`key:000000000000` ...) with values of
/// `size` bytes, so that its GETs all hit as kvtier's do.
fn populate(s: &Server, size: usize, n: usize, depth: usize) -> Result<(), String> {
    let url = format!("redis://{}:{}", s.host, s.port);
    let mut con = redis::Client::open(url).and_then(|c| c.get_connection()).map_err(|e| e.to_string())?;
    let value = vec![b'x'; size];
    for start in (0..n).step_by(depth) {
        let mut pipe = redis::pipe();
        for i in start..(start + depth).min(n) {
            pipe.cmd("SET").arg(format!("key:{i:012}")).arg(&value[..]).ignore();
        }
        pipe.exec(&mut con).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `redis-benchmark` SET and GET requests per second for values of `size` bytes.
fn redis_benchmark(s: &Server, size: usize, depth: usize, n: usize) -> Result<(f64, f64), String> {
    let out = Command::new(&s.benchmark)
        .args(["-h", &s.host, "-p", &s.port.to_string(), "-t", "set,get", "-c", "1", "--csv"])
        .args(["-d", &size.to_string(), "-P", &depth.to_string(), "-n", &n.to_string(), "-r", &n.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{name}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
            .ok_or_else(|| format!("no {name} line in {}'s output: {text}", s.benchmark))
    };
    Ok((rps("SET")?, rps("GET")?))
}

/// kvtier's put and get pages per second: `n` pages in round trips of `depth`.
fn ours(t: &RemoteTier, depth: usize, n: usize) -> Result<(f64, f64), String> {
    let page = t.page_bytes();
    let data: Vec<Vec<u8>> = (0..depth).map(|i| vec![(i as u8).wrapping_mul(31).wrapping_add(7); page]).collect();
    let hashes: Vec<BlockHash> = (0..n as u64).map(|i| BlockHash(u128::from(i))).collect();
    let t0 = Instant::now();
    for chunk in hashes.chunks(depth) {
        let batch: Vec<(BlockHash, &[u8])> = chunk.iter().zip(&data).map(|(&h, d)| (h, d.as_slice())).collect();
        if !t.put_pages(&batch).iter().all(|&ok| ok) {
            return Err(format!("a put failed: {:?}", t.metrics()));
        }
    }
    let put = n as f64 / t0.elapsed().as_secs_f64();
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; page]).collect();
    let t0 = Instant::now();
    for chunk in hashes.chunks(depth) {
        let mut reqs: Vec<(BlockHash, &mut [u8])> =
            chunk.iter().zip(bufs.iter_mut()).map(|(&h, b)| (h, b.as_mut_slice())).collect();
        if !t.get_pages(&mut reqs).iter().all(|&ok| ok) {
            return Err(format!("a get failed: {:?}", t.metrics()));
        }
    }
    let get = n as f64 / t0.elapsed().as_secs_f64();
    Ok((put, get))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let url = args.iter().position(|a| a == "--url").and_then(|i| args.get(i + 1)).cloned();
    let s = server(url.clone())?;
    let url = url.unwrap_or_else(|| format!("redis://{}:{}", s.host, s.port));
    let rounds = if quick { 1 } else { 5 };
    println!("G4 throughput vs {} on one server, one connection each, same value size and pipeline depth", s.benchmark);
    println!("| page | depth | kvtier put pages/s | SET/s | put ratio | kvtier get pages/s | GET/s | get ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // (page bytes, a layout with pages of that size, pipeline depth, pages per round)
    let cases = [
        (
            "2 MiB",
            KvLayout::new(32, 8, 128, Dtype::F16, 16).map_err(|e| e.to_string())?,
            8usize,
            if quick { 64 } else { 512 },
        ),
        (
            "64 KiB",
            KvLayout::new(1, 8, 128, Dtype::F16, 16).map_err(|e| e.to_string())?,
            64,
            if quick { 2048 } else { 16384 },
        ),
    ];
    for (name, layout, depth, n) in cases {
        let config = RemoteConfig::new(&url)
            .with_model_id("g4-report")
            .with_timeout(Duration::from_secs(10))
            .with_max_batch_bytes(depth * (layout.page_bytes() + HEADER_BYTES));
        let t = RemoteTier::open(&layout, config).map_err(|e| e.to_string())?;
        let (mut put, mut get, mut set_rps, mut get_rps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // a first round of each fills the server's keyspace (n keys; redis-benchmark's -r n
        // draws its keys from as many), so the measured rounds overwrite values alike
        ours(&t, depth, n)?;
        populate(&s, layout.page_bytes() + HEADER_BYTES, n, depth)?;
        for _ in 0..rounds {
            let (p, g) = ours(&t, depth, n)?;
            // the same value size on the wire: the page plus kvtier's header
            let (rs, rg) = redis_benchmark(&s, layout.page_bytes() + HEADER_BYTES, depth, n)?;
            put.push(p);
            get.push(g);
            set_rps.push(rs);
            get_rps.push(rg);
        }
        let (p, g, rs, rg) = (median(put), median(get), median(set_rps), median(get_rps));
        println!("| {name} | {depth} | {p:.0} | {rs:.0} | {:.2} | {g:.0} | {rg:.0} | {:.2} |", p / rs, g / rg);
    }
    println!(
        "(median of {rounds} interleaved rounds after one warm-up each, over the same number of keys; kvtier's pages carry a {HEADER_BYTES}-byte header and are checksummed and verified)"
    );
    Ok(())
}
