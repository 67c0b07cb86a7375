//! A new image version, as root, with real podman containers: a workload
//! learned on one image, then a container of a new version of the same
//! repository (another digest) starts from the old version's profile, in
//! monitor mode, and is reported as an image update once.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// The new version, built locally from the test image (never pulled), and
/// removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn a_new_image_version_starts_from_the_previous_profile_in_monitor_mode() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let tag = unique("v2").replace('-', "");
    let new_ref = format!("localhost/lancet-busybox:{tag}");
    std::fs::write(dir.path().join("Containerfile"), format!("FROM {IMAGE}\nLABEL lancet.test.update={tag}\n")).unwrap();
    podman(&["build", "-q", "-t", &new_ref, "-f", dir.path().join("Containerfile").to_str().unwrap(), dir.path().to_str().unwrap()]);
    let _image = Image(new_ref.clone());

    let old = Container::start(&unique("lancet-u-old"), &[], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    assert!(old.exec(&["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]).status.success());
    std::thread::sleep(Duration::from_millis(1500));
    let old_profile = agent.cli(&["profile", "show", &old.name]);
    assert!(old_profile.contains("mode: learn") && old_profile.contains("8080"), "{old_profile}");

    let name = unique("lancet-u-new");
    let id = podman(&["run", "-d", "--name", &name, &new_ref, "httpd", "-f", "-p", "8080", "-h", "/www"]);
    let new = Container { id, name };
    let deadline = Instant::now() + Duration::from_secs(15);
    let update = loop {
        let (found, _) = alerts_since(&alerts, 0);
        if let Some(a) = found.iter().find(|a| a["rule"] == "Image updated" && a["output_fields"]["container.name"] == new.name.as_str()) {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no image update alert: {found:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(update["output"].as_str().unwrap_or("").contains("lancet profile diff"), "{update}");
    let new_profile = agent.cli(&["profile", "show", &new.name]);
    assert!(new_profile.contains("mode: monitor"), "the new version starts in monitor: {new_profile}");
    assert!(new_profile.contains("8080"), "with what the old version learned: {new_profile}");
    assert!(new_profile.contains("lancet.dev/previous-digest"), "{new_profile}");
    let list = agent.cli(&["profile", "list"]);
    assert_eq!(list.lines().filter(|l| l.contains("localhost/lancet-busybox")).count(), 2, "{list}");
}
