//! The admin API: its own listener (default `127.0.0.1:9901`, loopback only unless configured
//! otherwise), served with hyper on the control thread, never on a worker. Control plane.
//!
//! | method and path    | answer |
//! |--------------------|--------|
//! | `GET /metrics`     | Prometheus text format (see `control::metrics`) |
//! | `GET /healthz`     | `200 ok` while serving, `503 draining` while draining |
//! | `GET /config`      | the active config as JSON, with `generation` and `loaded_at` |
//! | `GET /log-level`   | the log filter in force |
//! | `PUT /log-level`   | body: a filter (`debug`, `warn,proxy::trace=info`); 400 if invalid |
//! | `POST /reload`     | reloads the config file: 200 `{"generation":N}` or 400 `{"error":"file:line: key: ..."}` |

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::control::active::State;
use crate::control::metrics;

/// Largest request body the admin API reads (a log filter).
const MAX_BODY: usize = 64 * 1024;

/// Serves admin connections until the task is dropped.
pub async fn serve_admin(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn json_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    reply(status, "application/json", serde_json::json!({ "error": msg }).to_string() + "\n")
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let res = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            let body = metrics::render(&state.shared, &state.process_values());
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        (&Method::GET, "/healthz") => {
            if state.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
            } else {
                reply(StatusCode::OK, TEXT, "ok\n")
            }
        }
        (&Method::GET, "/config") => reply(StatusCode::OK, "application/json", state.config_json() + "\n"),
        (&Method::GET, "/log-level") => match &state.logging {
            Some(l) => reply(StatusCode::OK, TEXT, l.level() + "\n"),
            None => reply(StatusCode::NOT_FOUND, TEXT, "logging is not managed by this process\n"),
        },
        (&Method::PUT, "/log-level") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, TEXT, "cannot read the request body\n")),
            };
            let level = String::from_utf8_lossy(&body).trim().to_owned();
            match &state.logging {
                None => reply(StatusCode::NOT_FOUND, TEXT, "logging is not managed by this process\n"),
                Some(l) => match l.set_level(&level) {
                    Ok(()) => {
                        tracing::info!(level = %level, "log level changed at run time");
                        reply(StatusCode::OK, TEXT, format!("{level}\n"))
                    }
                    Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
                },
            }
        }
        (&Method::POST, "/reload") => match state.reload("POST /reload") {
            Ok(generation) => reply(StatusCode::OK, "application/json", serde_json::json!({ "generation": generation }).to_string() + "\n"),
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (_, "/metrics" | "/healthz" | "/config" | "/log-level" | "/reload") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
            let allow = match path.as_str() {
                "/log-level" => "GET, PUT",
                "/reload" => "POST",
                _ => "GET",
            };
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
            r
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics, /healthz, /config, /log-level, /reload\n"),
    };
    Ok(res)
}
