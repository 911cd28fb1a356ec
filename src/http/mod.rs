//! The HTTP surface: the registry API listener, the admin listener, request
//! routing and the OCI error format. Dependencies inside point one way:
//! `server` → `api` (and `admin`) → the handlers (`blobs`, `manifests`,
//! `listings`, `passthrough`) → `route`, `error`, `headers`, `body`, with
//! `app` (the shared state) and `activity` (recent traffic for the status
//! page) beside them.

mod activity;
mod admin;
mod api;
mod app;
mod audit;
mod blobs;
pub mod body;
pub mod error;
mod headers;
mod listings;
mod manifests;
mod passthrough;
mod peer;
pub mod range;
mod refusals;
pub mod route;
mod server;
mod tls;

pub use activity::Activity;
pub use admin::{admin_service, metrics_service};
pub use api::handle;
pub use app::{App, RequestLog};
pub use audit::AuditLog;
pub use server::{serve, Listener, ServeOptions, Shutdown};
pub use tls::{Tls, TlsError};
