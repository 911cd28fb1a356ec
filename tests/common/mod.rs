//! Shared support for the end-to-end tests (and `benches/e2e.rs`): real
//! upstream registries, image fixtures, an in-process fake upstream, a
//! token server, a regcache launcher and the one HTTP client.
//!
//! Every test file declares it as `pub mod common;`: the helpers are then
//! the test crate's public API, so a binary that does not use one of them
//! gets no dead-code warning for it, and no `allow` hides anything. The
//! cost is that a helper no test uses at all goes unnoticed; to find such
//! helpers, turn every `pub mod common;` into `mod common;` for one
//! `cargo check --tests --benches` and look for warnings that every binary
//! reports.

pub mod cluster;
pub mod fake_s3;
pub mod fake_upstream;
pub mod http;
pub mod images;
pub mod ns_shim;
pub mod regcache;
pub mod registry;
pub mod seaweedfs;
pub mod tls;
pub mod token_server;
