//! Tamper evidence, as root: removing lancet's pinned maps and links while
//! the agent runs is noticed, alerted and repaired within a few seconds.
//! No containers: the agent runs in learn mode, with enforcement loaded
//! because its pin directory exists.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn removed_pins_are_alerted_and_put_back() {
    skip_unless_ready!(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let mut agent = Agent::start(&state, &policies, &alerts, &[]);
    // Enforcement loads at start when the pin directory exists (an earlier
    // run's).
    agent.kill9();
    std::fs::create_dir_all(&agent.pin_dir).unwrap();
    agent.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.pin_dir.join("cg_policy").exists() {
        assert!(Instant::now() < deadline, "enforcement never loaded: {}", agent.cli(&["status"]));
        std::thread::sleep(Duration::from_millis(200));
    }
    let pins: Vec<String> =
        std::fs::read_dir(&agent.pin_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(pins.iter().any(|p| p.starts_with("link-")), "{pins:?}");
    std::fs::remove_dir_all(&agent.pin_dir).expect("remove the pins");

    let (found, _) = wait_alerts(&alerts, 0, Duration::from_secs(10), Duration::from_millis(200));
    let tamper =
        found.iter().find(|a| a["rule"] == "lancet enforcement pins removed").unwrap_or_else(|| panic!("no tamper alert: {found:?}"));
    assert_eq!(tamper["priority"], "Critical");
    let repaired: Vec<&str> = tamper["output_fields"]["lancet.repaired"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(repaired.contains(&"cg_policy") && repaired.iter().any(|p| p.starts_with("link-")), "{repaired:?}");
    for p in &pins {
        assert!(agent.pin_dir.join(p).exists(), "{p} was not put back");
    }
}
