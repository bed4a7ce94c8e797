//! The access log's writer thread: receives fixed-size records from the workers
//! (`data::access`), formats them and writes them, batching flushes. Control plane.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, UNIX_EPOCH};

use crate::config::{AccessLogTarget, LogConfig, LogFormat};
use crate::control::active::rfc3339;
use crate::data::access::{AccessLog, AccessRecord};

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the access-log thread: {source}")]
    Thread { source: io::Error },
}

/// Starts the writer when `[log] access_log` is on; returns the workers' sending side.
pub fn start(log: &LogConfig) -> Result<Option<AccessLog>, AccessLogError> {
    let out: Box<dyn Write + Send> = match &log.access_log {
        AccessLogTarget::Off => return Ok(None),
        AccessLogTarget::Stdout => Box::new(io::stdout()),
        AccessLogTarget::Stderr => Box::new(io::stderr()),
        AccessLogTarget::File(p) => Box::new(
            OpenOptions::new().create(true).append(true).open(p).map_err(|source| AccessLogError::Open { path: p.clone(), source })?,
        ),
    };
    let (tx, rx) = sync_channel(log.access_log_buffer);
    let json = log.format == LogFormat::Json;
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_loop(rx, out, json))
        .map_err(|source| AccessLogError::Thread { source })?;
    Ok(Some(AccessLog::new(tx)))
}

fn write_loop(rx: Receiver<AccessRecord>, out: Box<dyn Write + Send>, json: bool) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => {
                line.clear();
                format_record(&mut line, &r, json);
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
        // Flush once the queue is empty, so a burst becomes one write.
        if let Ok(r) = rx.try_recv() {
            line.clear();
            format_record(&mut line, &r, json);
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let _ = out.flush();
    }
}

/// One line: `time peer "METHOD host path" status latency_ms route=N worker=N`, or JSON.
pub fn format_record(line: &mut String, r: &AccessRecord, json: bool) {
    use std::fmt::Write as _;
    let time = rfc3339(r.time);
    let method = String::from_utf8_lossy(r.method());
    let host = String::from_utf8_lossy(r.host());
    let path = String::from_utf8_lossy(r.path());
    let peer = String::from_utf8_lossy(r.peer());
    let ms = r.latency.as_secs_f64() * 1e3;
    let route = if r.route == u16::MAX { -1 } else { i32::from(r.route) };
    if json {
        let v = serde_json::json!({
            "time": time.to_string(), "peer": peer, "method": method, "host": host, "path": path,
            "status": r.status, "latency_ms": (ms * 1000.0).round() / 1000.0, "route": route, "worker": r.worker,
            "unix": r.time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        });
        let _ = writeln!(line, "{v}");
    } else {
        let _ = writeln!(line, "{time} {peer} \"{method} {host}{path}\" {} {ms:.3}ms route={route} worker={}", r.status, r.worker);
    }
}
