//! Upkeep of the shared tier: the access records every replica writes
//! ([`access::AccessLog`]) and the janitor that one replica at a time runs
//! over the bucket with them ([`janitor::Janitor`]), applying `[cache]
//! max_size` and `max_age` to the bucket as eviction applies them to the
//! local disk.

pub mod access;
pub mod janitor;

pub use access::AccessLog;
pub use janitor::{Janitor, JanitorError, JanitorReport, JanitorSettings};
