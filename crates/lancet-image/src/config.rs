//! The parts of image and runtime configuration documents the scan reads.
//! Only the fields lancet uses are typed; everything else is ignored, so
//! configs from any builder (docker, buildah, kaniko…) read alike.

use serde::Deserialize;
use std::collections::BTreeMap;

/// An image config blob (OCI image spec / docker image JSON). Docker
/// writes `null` for empty lists, hence the options.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `config` of an image config, and `Config` of `podman image inspect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An OCI runtime bundle's `config.json` (runtime spec), the fields that
/// say how privileged the container runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    #[serde(default)]
    pub oci_version: Option<String>,
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub readonly: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

/// How the image starts, merged from whichever config the target has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
    /// `NAME=value` as configured (values stay in memory for the secret
    /// checks and are never written out).
    pub env: Vec<String>,
}

impl From<&ContainerConfig> for StartConfig {
    fn from(c: &ContainerConfig) -> Self {
        StartConfig {
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            user: c.user.clone().filter(|u| !u.is_empty()),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            exposed_ports: c.exposed_ports.as_ref().map(|p| p.keys().cloned().collect()).unwrap_or_default(),
            env: c.env.clone().unwrap_or_default(),
        }
    }
}

impl From<&RuntimeSpec> for StartConfig {
    fn from(s: &RuntimeSpec) -> Self {
        let p = s.process.clone().unwrap_or_default();
        StartConfig {
            entrypoint: p.args,
            cmd: Vec::new(),
            user: p.user.map(|u| format!("{}:{}", u.uid, u.gid)),
            working_dir: p.cwd.filter(|w| !w.is_empty()),
            exposed_ports: Vec::new(),
            env: p.env,
        }
    }
}

impl StartConfig {
    /// The `PATH` the image's processes start with (the usual default when
    /// the config sets none).
    pub fn path_dirs(&self) -> Vec<String> {
        let path =
            self.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').filter(|d| d.starts_with('/')).map(str::to_string).collect()
    }

    /// Names of the environment variables, sorted, without values.
    pub fn env_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.env.iter().map(|e| e.split('=').next().unwrap_or(e).to_string()).collect();
        v.sort();
        v.dedup();
        v
    }
}
