//! Loading the enforcement object and adopting what an earlier agent
//! pinned: maps reused before the programs load, links pointed at the new
//! programs, so there is never a moment without enforcement.

use super::isolation::{isolation_pins, Skb};
use super::pins::{io_err, link_cgroup, open_link, pin_link, prepare_pin_dir, replace_resized_stats};
use super::status::{initial_status, prog_id, program_info, HookKind, HookStatus};
use super::{euid, map_err, EnforceConfig, EnforceError, EnforceEvents, Enforcer, Result, LINK_PREFIX, MAP_NAMES};
use crate::skel::enforce::{EnforceSkel, EnforceSkelBuilder, OpenEnforceSkel};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapHandle, OpenObject};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub(super) fn open_skel<'a>(
    storage: &'a mut MaybeUninit<OpenObject>,
    pin_dir: Option<&Path>,
    only: Option<&str>,
    skip: &[String],
) -> Result<OpenEnforceSkel<'a>> {
    let mut open = EnforceSkelBuilder::default().open(storage).map_err(EnforceError::Open)?;
    if let Some(dir) = pin_dir {
        for mut m in open.open_object_mut().maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if MAP_NAMES.contains(&name.as_str()) {
                // Reused when pinned (and compatible), else created and pinned
                // by libbpf at load.
                m.set_pin_path(dir.join(&name)).map_err(EnforceError::Open)?;
            }
        }
    }
    crate::probes::select_programs(open.open_object_mut(), only, skip);
    Ok(open)
}

impl Enforcer {
    /// Loads the enforcement object, adopting the maps and links pinned under
    /// `cfg.pin_dir` (creating what is missing), and attaches the root hooks.
    /// A program this kernel refuses is left out and reported by
    /// [`Enforcer::status`]; the error is for what makes enforcement
    /// impossible (not root, no bpffs, maps that cannot load).
    pub fn open(cfg: EnforceConfig) -> Result<Enforcer> {
        let uid = euid();
        if uid != 0 {
            return Err(EnforceError::NotRoot(uid));
        }
        prepare_pin_dir(&cfg.pin_dir)?;
        let root =
            std::fs::File::open(&cfg.cgroup2_root).map_err(|source| EnforceError::Cgroup { path: cfg.cgroup2_root.clone(), source })?;
        let root_id = root.metadata().map_err(|source| EnforceError::Cgroup { path: cfg.cgroup2_root.clone(), source })?.ino();

        let mut status = initial_status(&cfg.cgroup2_root)?;
        replace_resized_stats(&cfg.pin_dir);

        let (mut first, mut retry) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        let skel = Self::load(Some(&cfg.pin_dir), &mut first, &mut retry, &mut status)?;

        let mut links = Vec::new();
        let mut skb_in = None;
        let mut skb_out = None;
        let mut sys_exit = None;
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let Some(st) = status.iter_mut().find(|s| s.program == name) else { continue };
            if st.error.is_some() {
                continue;
            }
            let (_, kind) = program_info(&name);
            match kind {
                HookKind::OnDemand => {
                    // Attached below, when some cgroup wants it.
                    match prog
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| e.to_string())
                        .and_then(|fd| prog_id(&fd).map(|id| (fd, id)).map_err(|e| format!("reading the program's id: {e}")))
                    {
                        Ok(p) => {
                            st.holds = true;
                            sys_exit = Some(p);
                        }
                        Err(e) => st.error = Some(format!("keeping the program: {e}")),
                    }
                }
                HookKind::Isolation(skb) => {
                    match prog.as_fd().try_clone_to_owned() {
                        Ok(fd) => {
                            st.holds = true;
                            if skb == Skb::Ingress {
                                skb_in = Some(fd);
                            } else {
                                skb_out = Some(fd);
                            }
                        }
                        Err(e) => st.error = Some(format!("keeping the program: {e}")),
                    }
                    // Point the isolations pinned by an earlier agent at
                    // this program.
                    for (path, _) in isolation_pins(&cfg.pin_dir).into_iter().filter(|(_, (_, s))| *s == skb) {
                        match open_link(&path) {
                            Ok(mut l) => {
                                if let Err(e) = l.update_prog(&prog) {
                                    tracing::warn!(pin = %path.display(), "isolation link keeps its old program: {e}");
                                }
                            }
                            Err(e) => tracing::warn!(pin = %path.display(), "opening a pinned isolation link: {e}"),
                        }
                    }
                }
                HookKind::Root | HookKind::Global => {
                    let path = cfg.pin_dir.join(format!("{LINK_PREFIX}{name}"));
                    st.pin = Some(path.clone());
                    let attach = || -> Result<Link> {
                        let r = if kind == HookKind::Root { prog.attach_cgroup(root.as_raw_fd()) } else { prog.attach() };
                        r.map_err(|e| EnforceError::Attach {
                            program: name.clone(),
                            target: if kind == HookKind::Root { cfg.cgroup2_root.clone() } else { PathBuf::from(&st.hook) },
                            source: io_err(e),
                        })
                    };
                    let adopted = match open_link(&path) {
                        Ok(mut old) => {
                            let right_place = kind != HookKind::Root || link_cgroup(&old) == Some(root_id);
                            match right_place.then(|| old.update_prog(&prog)) {
                                Some(Ok(())) => Some(old),
                                other => {
                                    // A tracing link cannot change program, and
                                    // a link may hang off the wrong or a dead
                                    // cgroup: attach anew, then drop the old one.
                                    if let Some(Err(e)) = other {
                                        tracing::debug!(program = %name, "replacing pinned link: {e}");
                                    }
                                    match attach() {
                                        Ok(mut new) => {
                                            let _ = old.detach();
                                            drop(old);
                                            let _ = std::fs::remove_file(&path);
                                            match pin_link(&mut new, &path) {
                                                Ok(()) => {
                                                    links.push((name.clone(), new));
                                                    st.holds = true;
                                                    st.adopted = true;
                                                }
                                                Err(e) => st.error = Some(e.to_string()),
                                            }
                                        }
                                        Err(e) => st.error = Some(e.to_string()),
                                    }
                                    None
                                }
                            }
                        }
                        Err(_) => {
                            match attach().and_then(|mut l| pin_link(&mut l, &path).map(|()| l)) {
                                Ok(l) => {
                                    links.push((name.clone(), l));
                                    st.holds = true;
                                }
                                Err(e) => st.error = Some(e.to_string()),
                            }
                            None
                        }
                    };
                    if let Some(l) = adopted {
                        st.adopted = true;
                        st.holds = true;
                        links.push((name.clone(), l));
                    }
                }
            }
        }
        for st in status.iter().filter(|s| s.error.is_some()) {
            tracing::warn!(program = %st.program, hook = %st.hook, error = ?st.error, "enforcement hook not in force");
        }

        let handle = |name: &'static str| -> Result<MapHandle> {
            let m = skel
                .object()
                .maps()
                .find(|m| m.name().to_string_lossy() == name)
                .ok_or_else(|| EnforceError::Open(io::Error::other(format!("no map {name}")).into()))?;
            MapHandle::try_from(&m).map_err(map_err(name, "keeping a handle"))
        };
        let mut enforcer = Enforcer {
            cg_policy: handle("cg_policy")?,
            net_allow: handle("net_allow")?,
            kill_ino: handle("kill_ino")?,
            multicall: handle("multicall")?,
            applets: handle("applets")?,
            stats: handle("enforce_stats")?,
            events: handle("enforce_events")?,
            skb_in,
            skb_out,
            sys_exit,
            links,
            status,
            cfg,
        };
        // The object closes here; the pinned links, the kept program fds
        // and the map handles hold everything that matters.
        drop(skel);
        enforcer.adopt_write_reports();
        Ok(enforcer)
    }

    /// Loads with the maps pinned; if the kernel refuses some program, finds
    /// which (each on its own, unpinned) and loads the rest (into `retry`).
    pub(super) fn load<'a>(
        pin_dir: Option<&Path>,
        first: &'a mut MaybeUninit<OpenObject>,
        retry: &'a mut MaybeUninit<OpenObject>,
        status: &mut [HookStatus],
    ) -> Result<EnforceSkel<'a>> {
        let shown = pin_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("(not pinned)"));
        let all_err = match open_skel(first, pin_dir, None, &[])?.load() {
            Ok(skel) => return Ok(skel),
            Err(e) => e,
        };
        tracing::warn!("loading all enforcement programs failed ({all_err}); probing them one by one");
        let mut skip = Vec::new();
        for st in status.iter_mut() {
            let mut s = MaybeUninit::uninit();
            let alone = open_skel(&mut s, None, Some(&st.program), &[])?.load().map(drop);
            if let Err(e) = alone {
                st.error = Some(format!("refused at load: {e}"));
                skip.push(st.program.clone());
            }
        }
        if skip.is_empty() {
            // Every program loads alone: the pinned maps are the problem.
            return Err(EnforceError::Load {
                pin_dir: shown,
                source: all_err,
                hint: " (the pinned maps do not match this build, e.g. left by another lancet version; \
                       `unpin_all` removes them, and the rules in them)",
            });
        }
        if skip.len() == status.len() {
            return Err(EnforceError::Load { pin_dir: shown, source: all_err, hint: "" });
        }
        open_skel(retry, pin_dir, None, &skip)?.load().map_err(|source| EnforceError::Load { pin_dir: shown, source, hint: "" })
    }

    pub fn config(&self) -> &EnforceConfig {
        &self.cfg
    }

    /// A reader of the denial/kill records. Independent of the enforcer: it
    /// keeps its own handle on the pinned ring.
    pub fn events(&self) -> Result<EnforceEvents> {
        let map = MapHandle::try_from(&self.events).map_err(map_err("enforce_events", "duplicating"))?;
        EnforceEvents::from_map(map, self.cfg.pin_dir.join("enforce_events"))
    }
}
