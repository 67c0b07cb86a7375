//! How a node or the hub proves who it is to NATS, and how it knows it
//! talks to the fleet's server: a NATS `.creds` file (a user JWT and its
//! nkey seed) or an nkey seed file, a CA bundle, and an optional client
//! certificate and key (mutual TLS). Only paths are given, on the command
//! line or in the configuration file: a secret on the command line is in
//! every `ps` listing and shell history.
//!
//! A secret file (creds, seed, private key) is refused, naming it, when it
//! is not a regular file owned by the agent's user or when its group or
//! others may read it, as ssh refuses such a private key: a seed readable
//! by others lets them publish as this node. The files are read again at
//! each connection (a rotated Secret is taken without a restart), and
//! checked at start so a wrong one stops the agent with the reason rather
//! than leaving it alone without its fleet.
//!
//! A `tls://` URL, a CA or a client certificate makes TLS required: the
//! client never falls back to plain text.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The flags, on `lancet run` and `lancet hub`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NatsSecurityArgs {
    /// A NATS credentials file (`.creds`: the user's JWT and nkey seed, as
    /// `nsc` writes it). Private: mode 0600 (or 0400), owned by the agent's
    /// user.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A file holding this user's nkey seed (`SU…`), for a server that
    /// lists users by nkey. Private, like --nats-creds.
    #[arg(long, value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// The CA bundle (PEM) that signed the NATS servers' certificates;
    /// makes TLS required.
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with --nats-key.
    #[arg(long, value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). Private, like
    /// --nats-creds.
    #[arg(long, value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
}

/// The settings in force (flags first, then the configuration file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl NatsSecurityArgs {
    /// Each setting from its flag, else from the file; a combination that
    /// cannot work is an error.
    pub fn resolve(&self, file: &crate::config::FileConfig) -> Result<NatsSecurity> {
        let s = NatsSecurity {
            creds: self.nats_creds.clone().or(file.nats_creds.clone()),
            nkey: self.nats_nkey.clone().or(file.nats_nkey.clone()),
            ca: self.nats_ca.clone().or(file.nats_ca.clone()),
            cert: self.nats_cert.clone().or(file.nats_cert.clone()),
            key: self.nats_key.clone().or(file.nats_key.clone()),
        };
        if s.creds.is_some() && s.nkey.is_some() {
            bail!("--nats-creds and --nats-nkey are two ways to be a NATS user: give one");
        }
        if s.cert.is_some() != s.key.is_some() {
            bail!("--nats-cert and --nats-key go together (the client certificate and its private key)");
        }
        Ok(s)
    }

    /// Whether any setting is given (they mean nothing without a NATS URL).
    pub fn any(&self) -> bool {
        self.nats_creds.is_some()
            || self.nats_nkey.is_some()
            || self.nats_ca.is_some()
            || self.nats_cert.is_some()
            || self.nats_key.is_some()
    }
}

/// Refuses a secret file that others could read or that is not ours.
/// Symbolic links are followed (a Kubernetes Secret volume is made of
/// them); the file they lead to is what is checked.
pub fn check_private(path: &Path, what: &str, owner: u32) -> Result<()> {
    let m = std::fs::metadata(path).with_context(|| format!("the NATS {what} {}", path.display()))?;
    if !m.is_file() {
        bail!("the NATS {what} {} is not a regular file", path.display());
    }
    if m.uid() != owner {
        bail!(
            "the NATS {what} {} belongs to uid {}, not to the agent's user (uid {owner}): refused, as ssh refuses such a key",
            path.display(),
            m.uid()
        );
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the NATS {what} {} can be read by its group or others (mode {mode:04o}): refused, as ssh refuses such a key; \
             make it private (chmod 600 {}; in Kubernetes, the Secret volume's defaultMode 0400)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn check_readable(path: &Path, what: &str) -> Result<()> {
    let m = std::fs::metadata(path).with_context(|| format!("the NATS {what} {}", path.display()))?;
    if !m.is_file() {
        bail!("the NATS {what} {} is not a regular file", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("the NATS {what} {}", path.display()))?;
    Ok(())
}

/// A seed file's seed: one `S…` nkey, blank lines and `#` comments
/// around it allowed.
fn read_seed(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the NATS nkey seed {}", path.display()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (Some(seed), None) = (lines.next(), lines.next()) else {
        bail!("the NATS nkey seed file {} must hold one seed (a line starting with S)", path.display());
    };
    if let Err(e) = nkeys::KeyPair::from_seed(seed) {
        bail!("the NATS nkey seed file {} does not hold a valid seed: {e}", path.display());
    }
    Ok(seed.to_string())
}

impl NatsSecurity {
    /// What `lancet run`/`lancet hub` checks at start: the secret files are
    /// private and ours, the others readable, a seed parses.
    pub fn check(&self, owner: u32) -> Result<()> {
        if let Some(p) = &self.creds {
            check_private(p, "credentials file", owner)?;
        }
        if let Some(p) = &self.nkey {
            check_private(p, "nkey seed file", owner)?;
            read_seed(p)?;
        }
        if let Some(p) = &self.key {
            check_private(p, "client key", owner)?;
        }
        if let Some(p) = &self.ca {
            check_readable(p, "CA bundle")?;
        }
        if let Some(p) = &self.cert {
            check_readable(p, "client certificate")?;
        }
        Ok(())
    }

    /// Whether the connection must be TLS: a `tls://` server, a CA or a
    /// client certificate.
    pub fn tls_required(&self, url: &str) -> bool {
        self.ca.is_some() || self.cert.is_some() || url.split(',').any(|s| s.trim().to_ascii_lowercase().starts_with("tls://"))
    }

    /// `options` with this user and these certificates (the files read
    /// now, checked again).
    pub async fn apply(&self, mut options: async_nats::ConnectOptions, url: &str) -> Result<async_nats::ConnectOptions> {
        let owner = lancet_sensor::features::euid();
        self.check(owner)?;
        if let Some(p) = &self.creds {
            options = options.credentials_file(p).await.with_context(|| format!("the NATS credentials file {}", p.display()))?;
        }
        if let Some(p) = &self.nkey {
            options = options.nkey(read_seed(p)?);
        }
        if let Some(p) = &self.ca {
            options = options.add_root_certificates(p.clone());
        }
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            options = options.add_client_certificate(c.clone(), k.clone());
        }
        if self.tls_required(url) {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

/// A connection error put so that its cause is plain: an unknown
/// certificate authority, a refused user.
pub fn explain(e: &anyhow::Error, sec: &NatsSecurity) -> String {
    // The chain, without the causes a layer already repeats.
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    let text = parts.join(": ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("unknownissuer")
        || lower.contains("invalid peer certificate")
        || lower.contains("certificate") && lower.contains("verif")
    {
        let hint = match &sec.ca {
            Some(ca) => format!("the server's certificate is not signed by the CA in {} (or not for this name)", ca.display()),
            None => "the server's certificate is not signed by a CA this node trusts: give the fleet's CA (--nats-ca FILE)".into(),
        };
        return format!("{text} ({hint})");
    }
    if lower.contains("authorization violation") {
        return format!("{text} (the server did not accept this node's NATS user: check --nats-creds or --nats-nkey)");
    }
    if lower.contains("tls") && lower.contains("required") {
        return format!("{text} (TLS is required on one side only: a tls:// URL or --nats-ca with a server that has TLS)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn secret_files_must_be_private_and_ours() {
        let dir = tempfile::tempdir().unwrap();
        let me = lancet_sensor::features::euid();
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let ok = write(dir.path(), "ok.nk", &format!("{seed}\n"), 0o600);
        let sec = NatsSecurity { nkey: Some(ok.clone()), ..Default::default() };
        sec.check(me).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            let p = write(dir.path(), &format!("loose-{mode:o}.nk"), &seed, mode);
            let e = format!("{:#}", NatsSecurity { nkey: Some(p.clone()), ..Default::default() }.check(me).unwrap_err());
            assert!(e.contains(&p.display().to_string()) && e.contains("group or others"), "{e}");
        }
        let e = format!("{:#}", sec.check(me + 1).unwrap_err());
        assert!(e.contains("belongs to uid"), "{e}");
        // A symbolic link (a Kubernetes Secret) is followed to its file.
        let link = dir.path().join("link.nk");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        NatsSecurity { nkey: Some(link), ..Default::default() }.check(me).unwrap();
        let bad = write(dir.path(), "bad.nk", "SUnot-a-seed\n", 0o600);
        let e = format!("{:#}", NatsSecurity { nkey: Some(bad), ..Default::default() }.check(me).unwrap_err());
        assert!(e.contains("does not hold a valid seed"), "{e}");
        let two = write(dir.path(), "two.nk", &format!("{seed}\n{seed}\n"), 0o600);
        assert!(NatsSecurity { nkey: Some(two), ..Default::default() }.check(me).is_err());
        let missing = dir.path().join("missing.creds");
        let e = format!("{:#}", NatsSecurity { creds: Some(missing.clone()), ..Default::default() }.check(me).unwrap_err());
        assert!(e.contains(&missing.display().to_string()), "{e}");
        // The CA and the certificate are not secrets: readable is enough.
        let ca = write(dir.path(), "ca.pem", "-----BEGIN CERTIFICATE-----\n", 0o644);
        NatsSecurity { ca: Some(ca), ..Default::default() }.check(me).unwrap();
    }

    #[test]
    fn flags_win_and_combinations_are_checked() {
        let file =
            crate::config::FileConfig { nats_nkey: Some("/file/seed".into()), nats_ca: Some("/file/ca.pem".into()), ..Default::default() };
        let flags = NatsSecurityArgs { nats_ca: Some("/flag/ca.pem".into()), ..Default::default() };
        let s = flags.resolve(&file).unwrap();
        assert_eq!(s.ca.as_deref(), Some(Path::new("/flag/ca.pem")));
        assert_eq!(s.nkey.as_deref(), Some(Path::new("/file/seed")));
        let both = NatsSecurityArgs { nats_creds: Some("/a.creds".into()), ..Default::default() };
        assert!(format!("{:#}", both.resolve(&file).unwrap_err()).contains("give one"));
        let half = NatsSecurityArgs { nats_cert: Some("/c.pem".into()), ..Default::default() };
        assert!(half.resolve(&Default::default()).is_err());
        assert!(s.tls_required("nats://127.0.0.1:4222"), "a CA makes TLS required");
        let plain = NatsSecurity::default();
        assert!(!plain.tls_required("nats://a:4222,nats://b:4222"));
        assert!(plain.tls_required("nats://a:4222, tls://b:4222"));
    }
}
