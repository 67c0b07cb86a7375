//! lancet's engine: everything between the kernel and the outputs that can be
//! tested without root — the event model, attribution of events to containers,
//! and the output formats. Events go in, attributed records come out.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod attribution;
pub mod batch;
pub mod bytes;
pub mod dns;
pub mod drift;
pub mod event;
pub mod exe;
pub mod exec_order;
pub mod flows;
pub mod json_line;
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

/// The hash maps on the event path (container ids of 64 characters, paths,
/// pids, cgroup ids, looked up several times per event): keyed at random
/// per process like std's SipHash, so flooding them with chosen keys is no
/// cheaper, and several times faster on such keys (SipHash was a fifth of
/// the agent's CPU per socket record).
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;
/// The hasher of [`FastMap`], for other maps on the event path.
pub type FastHasher = ahash::RandomState;
/// See [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, FastHasher>;
