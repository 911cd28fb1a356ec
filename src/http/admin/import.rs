//! `POST /admin/import`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::respond::{error, json};
use crate::cache::bundle::Placement;
use crate::http::app::App;
use crate::http::body::Body;

/// `POST /admin/import`: the body is a bundle (tar), verified and staged
/// as it arrives and installed only once all of it checked out (see
/// `cache::bundle`). The body is handed to the blocking importer through a
/// small channel, so memory stays bounded whatever the bundle's size.
/// `?upstream=NAME&repo=REPO` place references that name no registry or
/// repository (a bare tag).
pub(super) async fn import(app: &Arc<App>, request: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let query = |key: &str| {
        request.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        })
    };
    let placement = match Placement::new(
        query("upstream").as_deref(),
        query("repo").as_deref(),
        &app.upstreams,
    ) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let a = app.clone();
    let task = tokio::task::spawn_blocking(move || {
        a.cache.import(
            ChannelReader {
                rx,
                current: bytes::Bytes::new(),
            },
            &a.upstreams,
            &placement,
        )
    });
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => tx.send(Ok(data)).await,
                Err(_) => continue,
            },
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                break;
            }
        };
        // The importer stopped reading (it rejected the bundle).
        if sent.is_err() {
            break;
        }
    }
    drop(tx);
    match task.await {
        Ok(Ok(report)) => {
            tracing::info!(
                images = report.images.len(),
                tags = report.tags,
                blobs = report.blobs_added,
                manifests = report.manifests_added,
                bytes = report.bytes_added,
                "bundle imported through the admin API"
            );
            json(StatusCode::OK, &report)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bundle import refused");
            let status = if e.is_bad_bundle() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            error(status, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A blocking `Read` over body chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
