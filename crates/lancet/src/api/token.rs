//! The bearer token that allows changes over the TCP API: 32 random bytes
//! (from `/dev/urandom`) as 64 hex digits in `<state-dir>/api.token`,
//! created by the agent at its first start (mode 0600, `O_CREAT|O_EXCL|
//! O_NOFOLLOW`), and kept across restarts. Compared in constant time.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file's name in the state directory.
pub const FILE_NAME: &str = "api.token";

/// A token: 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Equality that takes the same time wherever the first difference is
/// (the lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Token {
    pub fn from_hex(s: &str) -> Option<Token> {
        let s = s.trim();
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Token(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.trim().to_ascii_lowercase().as_bytes())
    }

    /// A new random token.
    pub fn generate() -> Result<Token> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The agent's token in `state_dir`: read when it exists (a regular
    /// file owned by `owner`, mode tightened to 0600 if it was looser),
    /// created otherwise.
    pub fn load_or_create(state_dir: &Path, owner: u32) -> Result<Token> {
        Token::load_or_create_file(&state_dir.join(FILE_NAME), owner)
    }

    /// The same for a token file named by its path (`lancet hub`'s).
    pub fn load_or_create_file(path: &Path, owner: u32) -> Result<Token> {
        let path = path.to_path_buf();
        let new = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match new {
            Ok(mut f) => {
                let t = Token::generate()?;
                f.write_all(format!("{}\n", t.0).as_bytes())
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                tracing::info!(path = %path.display(), "API token created");
                Ok(t)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_existing(&path, owner),
            Err(e) => Err(e).with_context(|| format!("creating the API token {}", path.display())),
        }
    }
}

fn read_existing(path: &Path, owner: u32) -> Result<Token> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening the API token {} (a symbolic link is refused)", path.display()))?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        bail!("the API token {} is not a regular file; remove it and restart", path.display());
    }
    if m.uid() != owner {
        bail!("the API token {} belongs to uid {}, not to the agent (uid {owner}); remove it and restart", path.display(), m.uid());
    }
    if m.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tracing::warn!(path = %path.display(), "the API token was readable by others; made 0600 (consider removing it to get a new one)");
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Token::from_hex(&text).with_context(|| format!("{} does not hold a token (64 hex digits); remove it and restart", path.display()))
}

/// The client side: the token in `path`, if it can be read.
pub fn read_file(path: &PathBuf) -> Option<Token> {
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    Token::from_hex(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
        let t = Token::from_hex(&"0f".repeat(32)).unwrap();
        assert!(t.matches(&"0f".repeat(32)));
        assert!(t.matches(&"0F".repeat(32)), "hex case does not matter");
        assert!(!t.matches(&"0f".repeat(31)));
        assert!(!t.matches(""));
        assert!(Token::from_hex("xyz").is_none());
        assert!(Token::from_hex(&"g0".repeat(32)).is_none());
        assert_eq!(format!("{t:?}"), "Token(…)", "never logged");
    }

    #[test]
    fn created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        let a = Token::load_or_create(dir.path(), me).unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(a.as_str().len(), 64);
        let b = Token::load_or_create(dir.path(), me).unwrap();
        assert_eq!(a, b, "kept across restarts");
        assert_eq!(read_file(&path), Some(a.clone()));
        assert_ne!(Token::generate().unwrap(), a, "random");

        // Looser modes are tightened; another owner or garbage is refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Token::load_or_create(dir.path(), me).unwrap(), a);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(format!("{:#}", Token::load_or_create(dir.path(), me + 1).unwrap_err()).contains("belongs to uid"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(format!("{:#}", Token::load_or_create(dir.path(), me).unwrap_err()).contains("does not hold a token"));
    }

    #[test]
    fn a_symlinked_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, format!("{}\n", "ab".repeat(32))).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(FILE_NAME)).unwrap();
        let e = Token::load_or_create(dir.path(), me).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        assert_eq!(read_file(&dir.path().join(FILE_NAME)), None);
    }
}
