//! Pins the dashboard's graph library: the embedded cytoscape.js must have
//! the SHA-256 below (the file of the npm package `cytoscape@3.35.0`), or
//! the build stops. Its Subresource Integrity hash (base64 of the same
//! digest) is handed to the code as `LANCET_CYTOSCAPE_SRI`.

use sha2::{Digest, Sha256};

const CYTOSCAPE: &str = "assets/cytoscape-3.35.0.min.js";
const CYTOSCAPE_SHA256: &str = "71fa9ebec21a7ca2c40cff6aacc30d1f6464e363662ad4b2c197e1adc770cd94";

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn main() {
    println!("cargo:rerun-if-changed={CYTOSCAPE}");
    let data = std::fs::read(CYTOSCAPE).unwrap_or_else(|e| panic!("reading {CYTOSCAPE}: {e}"));
    let digest = Sha256::digest(&data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if hex != CYTOSCAPE_SHA256 {
        panic!("{CYTOSCAPE} has SHA-256 {hex}, not the pinned {CYTOSCAPE_SHA256}: the embedded graph library is not the one reviewed (see assets/README.md)");
    }
    println!("cargo:rustc-env=LANCET_CYTOSCAPE_SRI=sha256-{}", base64(&digest));
}
