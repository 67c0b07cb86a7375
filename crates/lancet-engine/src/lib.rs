//! lancet's engine: everything between the kernel and the outputs that can be
//! tested without root — the event model, attribution of events to containers,
//! and the output formats. Events go in, attributed records come out.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod attribution;
pub mod bytes;
pub mod dns;
pub mod drift;
pub mod event;
pub mod exe;
pub mod flows;
pub mod live;
pub mod output;
pub mod policy;
pub mod printable;
pub mod process;
pub mod profile;
pub mod replay;
pub mod response;
pub mod verdicts;
pub mod write_sets;
mod yaml_guard;
pub use yaml_guard::error_position as yaml_error_position;

pub use event::{Event, EventKind};
