//! Instruction counts (callgrind, via gungraun) of keep-alive exchanges: the direct path
//! (client → origin) and the proxied path (client → proxy → origin), each at two request counts.
//!
//! The client, the origin and the proxy's worker all run as tasks on this thread's
//! `current_thread` runtime: callgrind collects on the benchmark thread, and with one thread the
//! interleaving (and so the count) is the same on every run. Setup (runtime, bind, connect,
//! warm-up) is identical at both request counts, so the gate takes differences:
//! per request = (I(2N) − I(N)) / N, and the proxy's own cost = proxied − direct per request
//! (the client and origin cost the same on both paths). Run by `cargo run -p gates`.

use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;

use gates::harness::GET;
use gungraun::{Callgrind, LibraryBenchmarkConfig, library_benchmark, library_benchmark_group, main};
use proxy::config::{ServerIds, parse};
use proxy::data::accept::accept_loop;
use proxy::data::worker::{Shared, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WARMUP: u64 = 200;

fn requests() -> u64 {
    std::env::var("GATES_INSTR_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn body_bytes() -> usize {
    std::env::var("GATES_INSTR_BODY_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

/// Runs `warmup + n` keep-alive GETs and returns the bytes received (so nothing is optimised out).
fn exchange(proxied: bool, n: u64) -> u64 {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return 0 };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let Ok(origin_listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { return 0 };
        let Ok(origin_addr) = origin_listener.local_addr() else { return 0 };
        tokio::task::spawn_local(origin(origin_listener, body_bytes()));
        let target = if proxied {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"{}\"]\n",
                origin_addr
            );
            let Ok(cfg) = parse(Path::new("bench"), &text, &mut ServerIds::default()) else { return 0 };
            let worker = Worker::new(Shared::new(cfg.snapshot), 0);
            // The coarse-timer tick is wall-clock driven (a per-second cost, not per request):
            // kept out so the count stays exact run to run.
            worker.timers.never_tick();
            let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { return 0 };
            let Ok(addr) = listener.local_addr() else { return 0 };
            tokio::task::spawn_local(accept_loop(Rc::clone(&worker), listener));
            addr
        } else {
            origin_addr
        };
        let Ok(mut s) = tokio::net::TcpStream::connect(target).await else { return 0 };
        let _ = s.set_nodelay(true);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        for _ in 0..WARMUP + n {
            match round_trip(&mut s, &mut buf).await {
                Some(b) => total += b as u64,
                None => return 0,
            }
        }
        total
    })
}

/// A keep-alive origin answering each bodiless request with 200 and `body` bytes.
async fn origin(listener: tokio::net::TcpListener, body: usize) {
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    response.resize(response.len() + body, b'x');
    let response: Rc<[u8]> = response.into();
    while let Ok((mut s, _)) = listener.accept().await {
        let response = Rc::clone(&response);
        tokio::task::spawn_local(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            let mut filled = 0;
            loop {
                match s.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                let mut start = 0;
                while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    if s.write_all(&response).await.is_err() {
                        return;
                    }
                    start += end + 4;
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
        });
    }
}

async fn round_trip(s: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<usize> {
    s.write_all(GET).await.ok()?;
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = res.parse(&buf[..filled]) {
            let len = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())?;
            while filled < head + len {
                let n = s.read(&mut buf[filled..head + len]).await.ok()?;
                if n == 0 {
                    return None;
                }
                filled += n;
            }
            return Some(filled);
        }
    }
}

#[library_benchmark]
#[bench::n(requests())]
fn direct_n(n: u64) -> u64 {
    black_box(exchange(false, n))
}

#[library_benchmark]
#[bench::n2(2 * requests())]
fn direct_2n(n: u64) -> u64 {
    black_box(exchange(false, n))
}

#[library_benchmark]
#[bench::n(requests())]
fn proxied_n(n: u64) -> u64 {
    black_box(exchange(true, n))
}

#[library_benchmark]
#[bench::n2(2 * requests())]
fn proxied_2n(n: u64) -> u64 {
    black_box(exchange(true, n))
}

library_benchmark_group!(name = exchanges; benchmarks = direct_n, direct_2n, proxied_n, proxied_2n);

main!(
    config = LibraryBenchmarkConfig::default()
        .env_clear(false)
        .tool(Callgrind::with_args(["--cache-sim=no"]));
    library_benchmark_groups = exchanges
);
