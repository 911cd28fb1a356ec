//! regcache: a pull-through caching proxy for container registries.
//!
//! Dependencies point one way: `http` (routing, the OCI error format,
//! translating answers) → `cache` (the service: storage backends behind a
//! trait, fills, freshness, operations) → `upstream` (client, token auth,
//! failure classification), with `registry` (names, references, digests,
//! media types, descriptors) at the bottom. `config` is plain data,
//! `policy`, `metrics` and `notify` (events out to webhooks and the audit
//! log) sit beside; `daemon` builds the runtime parts
//! from the config once and wires them; `cli` is the management edge.

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod registry;
pub mod upstream;
