//! Fills and flights: one upstream fetch per blob or per manifest question,
//! however many clients ask at once, and the bodies that stream from them.

pub mod body;
pub mod fill;
pub mod readers;
pub mod ring;
pub mod single_flight;
mod source;
mod upload;

pub use body::{body_stream, wait_for_headers, BodySource, UNKNOWN_SIZE};
pub use fill::{Attached, Fills, Phase, Progress, RunningFill, IO_CHUNK};
pub use readers::{ReaderGuard, Readers};
pub use single_flight::SingleFlight;
