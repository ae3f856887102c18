//! A small HTTP/1.1 client for a host's gateway (hyper): what `fabric call`
//! sends, and what the tests and the load generator use, so all three speak
//! to the gateway the same way a service would.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use std::net::SocketAddr;

/// An answer from the gateway.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

/// One kept-alive HTTP/1.1 connection to a gateway.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    /// Connects to the gateway at `addr`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the gateway at {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, authority: addr.to_string() })
    }

    /// Sends one request (`headers` as name/value pairs) and reads the whole
    /// answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut request =
            hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).context("building the request")?;
        self.sender.ready().await.context("the gateway closed the connection")?;
        let response = self.sender.send_request(request).await.context("the request failed")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("reading the response body")?.to_bytes();
        Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

/// Sends one request on a connection of its own.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Answer> {
    Connection::open(addr).await?.send(method, path, headers, body.into()).await
}
