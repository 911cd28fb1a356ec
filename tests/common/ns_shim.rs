//! A client-side shim that makes any client send containerd's request shape:
//! it forwards every request to regcache with `ns=<registry>` appended to
//! the query, as containerd does for a mirror in `hosts.toml`. skopeo has no
//! way to add `ns` itself.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub struct NsShim {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl NsShim {
    pub async fn start(target: SocketAddr, ns: &str) -> NsShim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ns = form_urlencoded::byte_serialize(ns.as_bytes()).collect::<String>();
        let client = reqwest::Client::new();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let client = client.clone();
                let ns = ns.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            forward(client.clone(), target, ns.clone(), req)
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        NsShim { addr, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for NsShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: reqwest::Client,
    target: SocketAddr,
    ns: String,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let query = match req.uri().query() {
        Some(q) => format!("{q}&ns={ns}"),
        None => format!("ns={ns}"),
    };
    // containerd never pings /v2/ through a mirror with ns; keep it plain.
    let url = if path == "/v2/" || path == "/v2" {
        format!("http://{target}{path}")
    } else {
        format!("http://{target}{path}?{query}")
    };
    let mut out = client.request(req.method().clone(), url);
    for (k, v) in req.headers() {
        if k != http::header::HOST {
            out = out.header(k, v);
        }
    }
    let response = out.send().await.map_err(std::io::Error::other)?;
    let mut builder = hyper::Response::builder().status(response.status());
    for (k, v) in response.headers() {
        builder = builder.header(k, v);
    }
    let stream = response
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    Ok(builder
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap())
}
