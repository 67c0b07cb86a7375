//! What lancet's test suites share: real podman, Docker and containerd
//! containers and networks removed however a test ends ([`podman`],
//! [`docker`], [`containerd`], [`netns`]), a headless browser for the
//! dashboards ([`browser`]), fixture trees copied into a test's host root
//! ([`copy_tree`]), and skipping. A test that cannot run
//! here (not root, no podman, a kernel feature missing) returns early, and
//! the test harness counts it as passed; [`skip`] says why on stderr and
//! appends a line to the file named by `LANCET_SKIP_LOG`, so
//! `scripts/test.sh` can print `N passed, N failed, N skipped` and CI, as
//! root, can refuse any skip.
#![forbid(unsafe_code)]

pub mod browser;
pub mod containerd;
pub mod docker;
mod engine;
pub use engine::Engine;
pub mod mutate;
pub mod netns;
pub mod podman;

use std::io::Write;

/// The variable naming the file skips are appended to.
pub const SKIP_LOG: &str = "LANCET_SKIP_LOG";

/// Records that the current test skips, and why. Call it, then return.
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIPPED: {why}");
    let Some(path) = std::env::var_os(SKIP_LOG) else { return };
    // One write per line with O_APPEND: test threads running at once never
    // interleave within a line.
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("SKIPPED, and not recorded in {}: {e}", std::path::Path::new(&path).display());
    }
}

/// Copies the directory tree `from` into `to` (created): a fixture tree
/// (a runtime's state laid out as on a host) into a test's own host root.
/// Panics on any error: a fixture that cannot be copied is a broken test.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    for e in entries {
        let e = e.expect("a directory entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("its type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap_or_else(|err| panic!("copying {}: {err}", e.path().display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_one_line_naming_the_test() {
        let dir = std::env::temp_dir().join(format!("lancet-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        // The only test of this crate: nothing else reads the variable.
        std::env::set_var(SKIP_LOG, &log);
        skip("no podman\there");
        std::env::remove_var(SKIP_LOG);
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "tests::a_skip_is_one_line_naming_the_test\tno podman here\n");
    }
}
