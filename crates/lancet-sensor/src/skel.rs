//! The generated skeletons. `types` in each holds the Rust views of the C
//! structs of `bpf/lancet.h`.
#![allow(clippy::all, clippy::undocumented_unsafe_blocks, missing_docs, non_camel_case_types, unused_imports, dead_code)]

pub mod lancet {
    include!(concat!(env!("OUT_DIR"), "/lancet.skel.rs"));
}

pub mod probe {
    include!(concat!(env!("OUT_DIR"), "/probe.skel.rs"));
}

pub mod enforce {
    include!(concat!(env!("OUT_DIR"), "/enforce.skel.rs"));
}
