//! The two container CLIs that speak one grammar: podman's is Docker's
//! (`run -d --name`, `exec`, `inspect -f`, `network create`), so one
//! implementation serves both; only removal differs. [`crate::podman`] and
//! [`crate::docker`] each make their `Container` and `Network` from it.

use std::process::{Command, Output};

/// Which CLI a container or network belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    /// Debian's Docker client, by its path: `/usr/local/bin/docker` on these
    /// machines is a Docker 28 client without an engine.
    Docker,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => crate::docker::DOCKER,
        }
    }

    /// Runs the CLI; its trimmed stdout, or its stderr as the error.
    pub fn try_cli(self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.program()).args(args).output().map_err(|e| format!("running {}: {e}", self.program()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("{} {args:?} failed: {}", self.program(), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Runs the CLI, which must succeed; its trimmed stdout.
    pub fn cli(self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `run -d --name NAME EXTRA… IMAGE CMD…`: the new container's id.
    pub(crate) fn run_named(self, name: &str, image: &str, extra: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(cmd);
        self.cli(&args)
    }

    pub(crate) fn exec(self, id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", id];
        args.extend_from_slice(cmd);
        Command::new(self.program()).args(&args).output().unwrap_or_else(|e| panic!("{} exec: {e}", self.program()))
    }

    /// `rm -f` without waiting for a stop timeout (and, for Docker, with the
    /// container's anonymous volumes).
    pub(crate) fn remove(self, id: &str) {
        let args: &[&str] = match self {
            Engine::Podman => &["rm", "-f", "-t", "0", id],
            Engine::Docker => &["rm", "-f", "-v", id],
        };
        let _ = Command::new(self.program()).args(args).output();
    }

    pub(crate) fn remove_network(self, name: &str) {
        let args: &[&str] = match self {
            Engine::Podman => &["network", "rm", "-f", name],
            // Docker 20.10's `network rm` has no -f.
            Engine::Docker => &["network", "rm", name],
        };
        let _ = Command::new(self.program()).args(args).output();
    }
}

/// Defines, in the calling module, a `Container` (removed on drop) and a
/// `Network` (removed on drop) of `$engine`, with the methods the tests
/// use. Both podman's and Docker's come from here.
macro_rules! engine_types {
    ($engine:expr, $what:literal) => {
        #[doc = concat!("A ", $what, " container, removed (`rm -f`) when dropped.")]
        #[derive(Debug)]
        pub struct Container {
            /// The id the CLI printed, or the name for an adopted container.
            pub id: String,
            pub name: String,
        }

        impl Container {
            #[doc = concat!("`run -d --name NAME EXTRA… BUSYBOX_IMAGE CMD…` with ", $what, ".")]
            pub fn start(name: &str, extra: &[&str], cmd: &[&str]) -> Container {
                Self::start_image(name, BUSYBOX_IMAGE, extra, cmd)
            }

            /// `run -d --name NAME EXTRA… IMAGE CMD…`.
            pub fn start_image(name: &str, image: &str, extra: &[&str], cmd: &[&str]) -> Container {
                // Removed on drop even if `run` fails half-way (created, not started).
                let mut c = Container::adopt(name);
                c.id = $engine.run_named(name, image, extra, cmd);
                c
            }

            /// `run -d ARGS…` (the name, if any, among `args`).
            pub fn run(args: &[&str]) -> Container {
                let mut all = vec!["run", "-d"];
                all.extend_from_slice(args);
                let id = $engine.cli(&all);
                let name = $engine.try_cli(&["inspect", "-f", "{{.Name}}", &id]).unwrap_or_else(|_| id.clone());
                Container { id, name: name.trim_start_matches('/').to_string() }
            }

            /// A container made some other way, now removed on drop.
            pub fn adopt(name: &str) -> Container {
                Container { id: name.to_string(), name: name.to_string() }
            }

            pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
                $engine.exec(&self.id, cmd)
            }

            /// `sh -c SCRIPT` in the container.
            pub fn sh(&self, script: &str) -> std::process::Output {
                self.exec(&["sh", "-c", script])
            }

            pub fn pid(&self) -> u32 {
                $engine.cli(&["inspect", "-f", "{{.State.Pid}}", &self.id]).parse().expect("pid")
            }

            pub fn running(&self) -> bool {
                $engine.cli(&["inspect", "-f", "{{.State.Running}}", &self.id]) == "true"
            }

            /// Its IPv4 address on its (first) network.
            pub fn ip(&self) -> String {
                $engine.cli(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.id])
            }
        }

        impl Drop for Container {
            fn drop(&mut self) {
                $engine.remove(&self.id);
            }
        }

        #[doc = concat!("A ", $what, " network, removed when dropped (declare it before the")]
        /// containers on it, so they drop first).
        #[derive(Debug)]
        pub struct Network(pub String);

        impl Network {
            pub fn create(name: &str) -> Network {
                $engine.cli(&["network", "create", name]);
                Network(name.to_string())
            }
        }

        impl Drop for Network {
            fn drop(&mut self) {
                $engine.remove_network(&self.0);
            }
        }
    };
}

pub(crate) use engine_types;
