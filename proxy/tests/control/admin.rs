//! The admin API: `/metrics` against known traffic, `/config`, the log level at run time,
//! sampled tracing and the access log.

use std::time::Duration;

use crate::support::{Client, LONG_IO_TIMEOUT, Proxy, Upstream, metric, temp_dir, wait_until};

fn two_routes(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\nhost = \"a.test\"\npath_prefix = \"/\"\nupstream = \"up\"\n\
         [[routes]]\nhost = \"b.test\"\npath_prefix = \"/api/\"\nupstream = \"up\"\n\
         [upstreams.up]\nservers = [\"{up}\"]\n{extra}"
    )
}

#[test]
fn metrics_match_a_known_number_of_requests() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, ""), 2);
    let mut c = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    for _ in 0..25 {
        assert_eq!(c.get_host("/x", "a.test").unwrap().status, 200);
    }
    for _ in 0..7 {
        assert_eq!(c.get_host("/api/y", "b.test").unwrap().status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get_host("/", "nowhere.test").unwrap().status, 404);
    }
    let mut c2 = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    assert_eq!(c2.get_host("/z", "a.test").unwrap().status, 200);
    drop(c2);

    // A request is counted right after its response is written: the client may read the
    // response a moment before the counter moves, so wait (bounded) for the last one. Likewise
    // the proxy sees c2's close a moment after the drop: wait (bounded) for the open-connection
    // gauge to come back to 1 before the snapshot the asserts below read.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while (proxy.metric("proxy_request_duration_seconds_count") < 36.0 || proxy.metric("proxy_client_connections") > 1.0)
        && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, m) = proxy.admin("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert_eq!(metric(&m, "proxy_requests_total{route=\"0\",class=\"2xx\"}"), 26.0, "{m}");
    assert_eq!(metric(&m, "proxy_requests_total{route=\"1\",class=\"2xx\"}"), 7.0, "{m}");
    assert_eq!(metric(&m, "proxy_requests_total{route=\"none\",class=\"4xx\"}"), 3.0, "{m}");
    assert_eq!(metric(&m, "proxy_errors_total{kind=\"no_route\"}"), 3.0, "{m}");
    assert_eq!(metric(&m, "proxy_request_duration_seconds_count"), 36.0, "{m}");
    assert_eq!(metric(&m, "proxy_request_duration_seconds_bucket{le=\"+Inf\"}"), 36.0, "{m}");
    assert_eq!(metric(&m, "proxy_requests_in_flight"), 0.0, "{m}");
    assert_eq!(metric(&m, "proxy_client_connections_total"), 2.0, "{m}");
    // 33 proxied requests: each used a pooled connection or opened one.
    let opened = metric(&m, "proxy_upstream_connections_opened_total");
    let reused = metric(&m, "proxy_upstream_connections_reused_total");
    assert_eq!(opened + reused, 33.0, "{m}");
    assert!((1.0..=2.0).contains(&opened), "{m}");
    assert_eq!(metric(&m, "proxy_workers"), 2.0, "{m}");
    assert!(m.contains("proxy_route_info{route=\"1\",host=\"b.test\",path_prefix=\"/api/\",upstream=\"up\"} 1"), "{m}");
    assert!(m.contains("# TYPE proxy_request_duration_seconds histogram"), "{m}");
    // The open keep-alive connection is counted as active.
    assert_eq!(metric(&m, "proxy_client_connections"), 1.0, "{m}");
}

/// A burst of connections larger than the pool's cap (issue 14): while they are busy each holds a
/// working set of its own, so more are created than the pool may keep; when they go idle and when
/// they leave, the pool keeps at most `memory.pool_max` and the rest is freed. (That the freed
/// memory leaves the process is the memory gate's `after_release` row: RSS, not a count.)
#[test]
fn a_burst_larger_than_the_pool_cap_leaves_at_most_the_cap_spare() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let extra = "[memory]\npool_max = 4\nrelease_idle_after = \"1s\"\n";
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, extra), 1);
    let mut clients: Vec<Client> = (0..32).map(|_| Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT)).collect();
    for c in &mut clients {
        assert_eq!(c.get_host("/x", "a.test").unwrap().status, 200);
    }
    // Published by the worker's once-a-second sweep.
    let created = || proxy.metric("proxy_working_sets_created_total");
    assert!(wait_until(Duration::from_secs(3), || created() > 4.0), "the burst never exceeded the cap: {} created", created());
    // Idle past release_idle_after: every set is given back; the pool keeps at most the cap.
    assert!(wait_until(Duration::from_secs(4), || proxy.metric("proxy_working_sets_spare") > 0.0), "no set came back");
    let spare = proxy.metric("proxy_working_sets_spare");
    assert!(spare <= 4.0, "{spare} spare sets kept, cap 4 ({} created)", created());
    // The crowd leaves: nothing more is kept, and nothing new is created.
    let before = created();
    drop(clients);
    assert!(wait_until(Duration::from_secs(3), || proxy.metric("proxy_client_connections") == 0.0));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(proxy.metric("proxy_working_sets_spare") <= 4.0);
    assert_eq!(created(), before);
}

#[test]
fn config_endpoint_shows_the_active_config_and_generation() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, ""), 1);
    let (status, body) = proxy.admin("GET", "/config", "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["config"]["routes"][1]["host"], "b.test");
    assert!(v["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    let v: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/config", "").1).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(proxy.admin("GET", "/healthz", ""), (200, "ok\n".to_owned()));
    assert_eq!(proxy.admin("GET", "/nope", "").0, 404);
    assert_eq!(proxy.admin("GET", "/reload", "").0, 405);
}

#[test]
fn log_level_changed_at_run_time_takes_effect() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, "[log]\nlevel = \"warn\"\n"), 1);
    // At warn, a reload's info line is filtered out.
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!proxy.stderr().contains("config reloaded"), "{}", proxy.stderr());

    assert_eq!(proxy.admin("PUT", "/log-level", "not a [filter").0, 400);
    assert_eq!(proxy.admin("PUT", "/log-level", "info"), (200, "info\n".to_owned()));
    assert_eq!(proxy.admin("GET", "/log-level", ""), (200, "info\n".to_owned()));
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    assert!(proxy.wait_stderr("config reloaded", Duration::from_secs(3)), "{}", proxy.stderr());

    // And back down: the next reload is silent again.
    assert_eq!(proxy.admin("PUT", "/log-level", "error").0, 200);
    let before = proxy.stderr().matches("config reloaded").count();
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.stderr().matches("config reloaded").count(), before, "{}", proxy.stderr());
}

#[test]
fn sampled_tracing_and_access_log_write_one_line_per_request() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let access = dir.join("access.log");
    let extra = format!(
        "[log]\nlevel = \"warn,proxy::trace=info\"\naccess_log = \"{}\"\n[observability]\ntrace_sample_rate = 0.5\n",
        access.display()
    );
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, &extra), 1);
    let mut c = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    for i in 0..10 {
        assert_eq!(c.get_host(&format!("/req{i}"), "a.test").unwrap().status, 200);
    }
    assert!(proxy.wait_stderr("request done", Duration::from_secs(3)), "{}", proxy.stderr());
    std::thread::sleep(Duration::from_millis(300));
    // One request in two is sampled.
    assert_eq!(proxy.stderr().matches("request done").count(), 5, "{}", proxy.stderr());
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut lines = 0;
    while std::time::Instant::now() < until {
        lines = std::fs::read_to_string(&access).unwrap_or_default().lines().count();
        if lines == 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&access).unwrap();
    assert_eq!(lines, 10, "{text}");
    assert!(text.contains("\"GET a.test/req3\" 200"), "{text}");
    assert_eq!(proxy.metric("proxy_access_log_dropped_total"), 0.0);
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let up = Upstream::serving("ok", Duration::ZERO);
    let dir = temp_dir();
    let proxy = Proxy::start_in(&dir, &two_routes(up.addr, "[log]\nlevel = \"info\"\nformat = \"json\"\n"), 1);
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    assert!(proxy.wait_stderr("config reloaded", Duration::from_secs(3)), "{}", proxy.stderr());
    let line = proxy.stderr().lines().find(|l| l.contains("config reloaded")).unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["generation"], 2, "{line}");
}
