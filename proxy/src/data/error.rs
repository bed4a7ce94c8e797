//! The data plane's one error type: a small `Copy` enum, no strings, no backtraces.
//!
//! Each variant maps to exactly one canned response (`&'static [u8]`), so producing an error
//! response allocates nothing and formats nothing. Constructing the response is `#[cold]`.

/// What can go wrong while proxying one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request")]
    BadRequest,
    #[error("request line too long")]
    UriTooLong,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request head not received in time")]
    RequestTimeout,
    #[error("no route matches the request")]
    NoRoute,
    #[error("upstream connection refused or unreachable")]
    UpstreamConnect,
    #[error("upstream TLS handshake failed (verification, protocol or timeout)")]
    UpstreamTls,
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream response head not received in time")]
    ResponseTimeout,
    #[error("upstream sent an invalid response")]
    BadResponse,
    #[error("upstream closed the connection before responding")]
    UpstreamClosed,
    #[error("upstream failed while the response was being relayed")]
    UpstreamBroken,
    #[error("client closed or reset the connection")]
    ClientGone,
    #[error("expectation failed")]
    ExpectationFailed,
}

impl ProxyError {
    /// The response the client gets, or `None` when the only honest answer is to close.
    #[cold]
    #[inline(never)]
    pub fn response(self) -> Option<&'static [u8]> {
        Some(match self {
            Self::BadRequest => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::HeadersTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::BodyTooLarge => b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::NoRoute => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            Self::UpstreamConnect | Self::UpstreamTls | Self::BadResponse | Self::UpstreamClosed => {
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
            }
            Self::ConnectTimeout | Self::ResponseTimeout => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n",
            Self::ExpectationFailed => b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::UpstreamBroken | Self::ClientGone => return None,
        })
    }

    /// Whether the client connection can carry another request after this error's response.
    /// Only upstream-side failures keep it (the request was read completely before they happen).
    pub fn keeps_client(self) -> bool {
        matches!(
            self,
            Self::NoRoute
                | Self::UpstreamConnect
                | Self::UpstreamTls
                | Self::BadResponse
                | Self::UpstreamClosed
                | Self::ConnectTimeout
                | Self::ResponseTimeout
        )
    }

    /// Status code, for metrics and the access log.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::BodyTooLarge => 413,
            Self::RequestTimeout => 408,
            Self::NoRoute => 404,
            Self::UpstreamConnect | Self::UpstreamTls | Self::BadResponse | Self::UpstreamClosed | Self::UpstreamBroken => 502,
            Self::ConnectTimeout | Self::ResponseTimeout => 504,
            Self::ExpectationFailed => 417,
            Self::ClientGone => 499,
        }
    }
}
