//! regcache: a pull-through caching proxy for container registries.
//!
//! Dependencies point one way: `http` (routing, the OCI error format) →
//! `registry` (names, references, digests, media types) → `cache` (blob
//! store, fills, index) → `upstream` (client, token auth); `config` and
//! `metrics` sit beside them, and `daemon` wires them together.

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod upstream;
