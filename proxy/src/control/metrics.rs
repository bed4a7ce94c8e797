//! `/metrics`: sums the per-worker counter blocks and renders the Prometheus text format
//! (version 0.0.4). Control plane: runs on scrape, allocation and formatting are fine.
//!
//! Why not a metrics crate: the common ones (`prometheus`, `prometheus-client`, `metrics`) keep
//! one shared atomic per series (a locked read-modify-write on a cache line every worker writes)
//! and look labelled series up in a map behind a lock; the contract wants single-writer,
//! per-worker counters with no lock on the request path. The text format is small enough to
//! write here.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::config::RouteInfo;
use crate::data::metrics::{
    CLASSES, ERROR_KINDS, H2_EVENTS, H2Event, LATENCY_BOUNDS_US, MAX_ROUTE_SLOTS, ROUTE_NONE, ROUTE_OTHER, TLS_FAILURES, Totals,
};
use crate::data::worker::Shared;

/// Process-level values the exporter adds beside the worker counters.
#[derive(Debug, Clone, Default)]
pub struct ProcessValues {
    pub generation: u64,
    pub loaded_at_unix: f64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub draining: bool,
    pub log_dropped: u64,
    pub routes: Vec<RouteInfo>,
}

/// Sums every worker's block.
pub fn totals(shared: &Shared) -> Totals {
    let mut t = Totals::default();
    for m in shared.metrics.iter() {
        m.sum_into(&mut t);
    }
    t
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn route_label(slot: usize) -> String {
    match slot {
        ROUTE_NONE => "none".into(),
        ROUTE_OTHER => "other".into(),
        n => n.to_string(),
    }
}

/// The whole exposition.
pub fn render(shared: &Shared, p: &ProcessValues) -> String {
    let t = totals(shared);
    let mut out = String::with_capacity(8 * 1024);

    header(&mut out, "proxy_requests_total", "counter", "Requests answered, by route index and status class.");
    for (slot, classes) in t.requests.iter().enumerate() {
        for (c, &v) in classes.iter().enumerate() {
            if v != 0 {
                let _ = writeln!(out, "proxy_requests_total{{route=\"{}\",class=\"{}\"}} {v}", route_label(slot), CLASSES[c]);
            }
        }
    }

    header(&mut out, "proxy_request_duration_seconds", "histogram", "Time from a complete request head to the end of the response.");
    let mut cumulative = 0;
    for (i, &v) in t.latency.iter().enumerate() {
        cumulative += v;
        match LATENCY_BOUNDS_US.get(i) {
            Some(&us) => {
                let _ = writeln!(out, "proxy_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}", us as f64 / 1e6);
            }
            None => {
                let _ = writeln!(out, "proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "proxy_request_duration_seconds_sum {}", t.latency_sum_us as f64 / 1e6);
    let _ = writeln!(out, "proxy_request_duration_seconds_count {cumulative}");

    header(&mut out, "proxy_requests_in_flight", "gauge", "Requests read and not yet answered.");
    let _ = writeln!(out, "proxy_requests_in_flight {}", t.in_flight.max(0));

    header(&mut out, "proxy_client_connections", "gauge", "Open client connections.");
    let _ = writeln!(out, "proxy_client_connections {}", shared.connections.load(Ordering::Relaxed));
    header(&mut out, "proxy_client_connections_total", "counter", "Client connections accepted.");
    let _ = writeln!(out, "proxy_client_connections_total {}", t.connections);

    header(&mut out, "proxy_upstream_connections_opened_total", "counter", "Upstream connections opened (pool misses).");
    let _ = writeln!(out, "proxy_upstream_connections_opened_total {}", t.upstream_opened);
    header(&mut out, "proxy_upstream_connections_reused_total", "counter", "Requests sent on a pooled upstream connection (pool hits).");
    let _ = writeln!(out, "proxy_upstream_connections_reused_total {}", t.upstream_reused);
    header(
        &mut out,
        "proxy_working_sets_spare",
        "gauge",
        "Spare connection working sets (buffers and heads) the workers keep for reuse, as of their last once-a-second sweep.",
    );
    let _ = writeln!(out, "proxy_working_sets_spare {}", t.working_sets_spare);
    header(
        &mut out,
        "proxy_working_sets_created_total",
        "counter",
        "Connection working sets the workers have created (a pool miss), as of their last once-a-second sweep.",
    );
    let _ = writeln!(out, "proxy_working_sets_created_total {}", t.working_sets_created);
    header(&mut out, "proxy_upstream_retries_total", "counter", "Requests replayed on a fresh connection after a stale pooled one failed.");
    let _ = writeln!(out, "proxy_upstream_retries_total {}", t.retries);

    header(&mut out, "proxy_tls_handshakes_total", "counter", "TLS handshakes completed, by kind (full or resumed).");
    let _ = writeln!(out, "proxy_tls_handshakes_total{{kind=\"full\"}} {}", t.tls_full);
    let _ = writeln!(out, "proxy_tls_handshakes_total{{kind=\"resumed\"}} {}", t.tls_resumed);
    header(
        &mut out,
        "proxy_tls_failures_total",
        "counter",
        "TLS connections that failed, by kind (in the handshake or in a record after it).",
    );
    for (k, (_, name)) in TLS_FAILURES.iter().enumerate() {
        let _ = writeln!(out, "proxy_tls_failures_total{{kind=\"{name}\"}} {}", t.tls_failures[k]);
    }

    header(
        &mut out,
        "proxy_upstream_tls_handshakes_total",
        "counter",
        "TLS handshakes with upstream servers (groups with tls = true), by kind (full or resumed from the session cache). A failed one is counted in proxy_errors_total{kind=\"upstream_tls\"}.",
    );
    let _ = writeln!(out, "proxy_upstream_tls_handshakes_total{{kind=\"full\"}} {}", t.upstream_tls_full);
    let _ = writeln!(out, "proxy_upstream_tls_handshakes_total{{kind=\"resumed\"}} {}", t.upstream_tls_resumed);

    header(
        &mut out,
        "proxy_h2_events_total",
        "counter",
        "HTTP/2: client connections set up or failed, streams (requests) accepted, streams reset by either side, connections ended by a protocol error (GOAWAY) or an unanswered keep-alive ping; sessions and streams opened to upstream servers, and upstream streams the server reset or refused.",
    );
    for (k, (_, name)) in H2_EVENTS.iter().enumerate() {
        let _ = writeln!(out, "proxy_h2_events_total{{event=\"{name}\"}} {}", t.h2[k]);
    }
    header(
        &mut out,
        "proxy_requests_by_protocol_total",
        "counter",
        "Requests answered, by the protocol the client spoke (the same requests as proxy_requests_total).",
    );
    let total: u64 = t.requests.iter().flatten().sum();
    let h2 = t.h2[H2Event::Stream as usize];
    let _ = writeln!(out, "proxy_requests_by_protocol_total{{protocol=\"http1\"}} {}", total.saturating_sub(h2));
    let _ = writeln!(out, "proxy_requests_by_protocol_total{{protocol=\"h2\"}} {h2}");

    header(&mut out, "proxy_errors_total", "counter", "Failed requests by kind.");
    for (k, (_, name)) in ERROR_KINDS.iter().enumerate() {
        let _ = writeln!(out, "proxy_errors_total{{kind=\"{name}\"}} {}", t.errors[k]);
    }

    header(&mut out, "proxy_route_info", "gauge", "What each route index of the active config is (value 1).");
    for (i, r) in p.routes.iter().enumerate().take(MAX_ROUTE_SLOTS) {
        let _ = writeln!(
            out,
            "proxy_route_info{{route=\"{i}\",host=\"{}\",path_prefix=\"{}\",upstream=\"{}\"}} 1",
            esc(&r.host),
            esc(&r.path_prefix),
            esc(&r.upstream)
        );
    }

    header(&mut out, "proxy_config_generation", "gauge", "Generation of the active config (1 at start, +1 per successful reload).");
    let _ = writeln!(out, "proxy_config_generation {}", p.generation);
    header(&mut out, "proxy_config_loaded_timestamp_seconds", "gauge", "When the active config was loaded (Unix time).");
    let _ = writeln!(out, "proxy_config_loaded_timestamp_seconds {:.3}", p.loaded_at_unix);
    header(&mut out, "proxy_config_reloads_total", "counter", "Reload attempts by result.");
    let _ = writeln!(out, "proxy_config_reloads_total{{result=\"ok\"}} {}", p.reloads_ok);
    let _ = writeln!(out, "proxy_config_reloads_total{{result=\"error\"}} {}", p.reloads_failed);

    header(&mut out, "proxy_draining", "gauge", "1 while the proxy drains (after SIGTERM/SIGINT).");
    let _ = writeln!(out, "proxy_draining {}", u8::from(p.draining));
    header(&mut out, "proxy_workers", "gauge", "Worker threads.");
    let _ = writeln!(out, "proxy_workers {}", shared.metrics.len());
    header(&mut out, "proxy_access_log_dropped_total", "counter", "Access-log records dropped because the writer fell behind.");
    let _ = writeln!(out, "proxy_access_log_dropped_total {}", t.access_log_dropped);
    header(&mut out, "proxy_log_dropped_lines_total", "counter", "Log lines dropped because the log writer fell behind.");
    let _ = writeln!(out, "proxy_log_dropped_lines_total {}", p.log_dropped);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ServerIds, parse};
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn renders_sums_of_all_workers() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:1\"]\n";
        let c = parse(Path::new("t"), text, &mut ServerIds::default()).unwrap();
        let shared = Shared::with_workers(c.snapshot, 2, None);
        shared.metrics[0].count(0, 200, Duration::from_millis(3));
        shared.metrics[1].count(0, 204, Duration::from_millis(30));
        shared.metrics[1].count(ROUTE_NONE, 400, Duration::ZERO);
        let p = ProcessValues { generation: 3, routes: c.routes, ..Default::default() };
        let out = render(&shared, &p);
        assert!(out.contains("proxy_requests_total{route=\"0\",class=\"2xx\"} 2\n"), "{out}");
        assert!(out.contains("proxy_requests_total{route=\"none\",class=\"4xx\"} 1\n"), "{out}");
        assert!(out.contains("proxy_request_duration_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("proxy_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("proxy_request_duration_seconds_count 3\n"), "{out}");
        assert!(out.contains("proxy_route_info{route=\"0\",host=\"\",path_prefix=\"/\",upstream=\"b\"} 1\n"), "{out}");
        assert!(out.contains("proxy_config_generation 3\n"), "{out}");
        assert!(out.contains("proxy_workers 2\n"), "{out}");
    }
}
