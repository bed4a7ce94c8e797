//! Heap allocations per proxied request, measured with dhat around the real data plane.
//!
//! Workload: keep-alive GET, 1 KiB response body, warm pool; the proxy runs in this process
//! (one worker) between an allocation-free client and origin. Prints one JSON object.
//! The direct path (client → origin) is measured the same way as the control: it must be 0,
//! or the harness itself is allocating and the proxy's figure is not to be trusted.

use std::process::ExitCode;

use gates::harness::{self, Client, Origin};
use proxy::control::runtime::Engine;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

struct Args {
    engine: Engine,
    requests: u64,
    warmup: u64,
    body_bytes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { engine: Engine::Native, requests: 10_000, warmup: 2_000, body_bytes: 1024 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--engine" => {
                a.engine = match v()?.as_str() {
                    "native" => Engine::Native,
                    "hyper" => Engine::Hyper,
                    other => return Err(format!("unknown engine {other:?} (native|hyper)")),
                }
            }
            "--requests" => a.requests = v()?.parse().map_err(|_| "--requests takes a number".to_owned())?,
            "--warmup" => a.warmup = v()?.parse().map_err(|_| "--warmup takes a number".to_owned())?,
            "--body-bytes" => a.body_bytes = v()?.parse().map_err(|_| "--body-bytes takes a number".to_owned())?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.requests == 0 {
        return Err("--requests must be > 0".into());
    }
    Ok(a)
}

struct Delta {
    blocks: u64,
    bytes: u64,
    live_blocks: i64,
}

fn measure(client: &mut Client, warmup: u64, n: u64) -> Result<Delta, String> {
    for _ in 0..warmup {
        expect_200(client.round_trip())?;
    }
    let before = dhat::HeapStats::get();
    for _ in 0..n {
        expect_200(client.round_trip())?;
    }
    let after = dhat::HeapStats::get();
    Ok(Delta {
        blocks: after.total_blocks - before.total_blocks,
        bytes: after.total_bytes - before.total_bytes,
        live_blocks: after.curr_blocks as i64 - before.curr_blocks as i64,
    })
}

fn expect_200(r: std::io::Result<u16>) -> Result<(), String> {
    match r {
        Ok(200) => Ok(()),
        Ok(s) => Err(format!("unexpected status {s}")),
        Err(e) => Err(format!("request failed: {e}")),
    }
}

fn run(a: &Args) -> Result<String, String> {
    let _profiler = dhat::Profiler::builder().testing().build();
    let origin = Origin::start(a.body_bytes).map_err(|e| format!("origin: {e}"))?;
    let running = harness::start_proxy(origin.addr, a.engine).map_err(|e| format!("proxy: {e}"))?;
    let proxy_addr = running.addrs[0];

    let mut direct = Client::connect(origin.addr, harness::GET).map_err(|e| format!("connect origin: {e}"))?;
    let control = measure(&mut direct, a.warmup, a.requests)?;
    let mut via = Client::connect(proxy_addr, harness::GET).map_err(|e| format!("connect proxy: {e}"))?;
    let accepted_before = origin.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let proxied = measure(&mut via, a.warmup, a.requests)?;
    let accepted_after = origin.accepted.load(std::sync::atomic::Ordering::Relaxed);

    let n = a.requests as f64;
    Ok(format!(
        "{{\"engine\":\"{}\",\"requests\":{},\"warmup\":{},\"body_bytes\":{},\"allocs_per_request\":{:.4},\"bytes_per_request\":{:.1},\"live_blocks_delta\":{},\"control_allocs_per_request\":{:.4},\"upstream_connections_opened\":{}}}",
        match a.engine {
            Engine::Native => "native",
            Engine::Hyper => "hyper",
        },
        a.requests,
        a.warmup,
        a.body_bytes,
        proxied.blocks as f64 / n,
        proxied.bytes as f64 / n,
        proxied.live_blocks,
        control.blocks as f64 / n,
        accepted_after - accepted_before,
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("alloc-probe: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("alloc-probe: {e}");
            ExitCode::from(1)
        }
    }
}
