//! Shared support for the end-to-end tests: real upstream registries,
//! image fixtures, an in-process fake upstream and a regcache launcher.
#![allow(dead_code)]

pub mod fake_upstream;
pub mod images;
pub mod ns_shim;
pub mod regcache;
pub mod registry;
pub mod tls;
pub mod token_server;
