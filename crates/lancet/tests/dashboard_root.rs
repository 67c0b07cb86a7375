//! The dashboard end to end in a real headless browser (Debian's chromium
//! driven through chromedriver over WebDriver), against a `lancet run` in
//! learn mode and real podman containers:
//! - the map draws the edge between two containers that talk, and clicking
//!   it shows its connections and the profile entry that allows it;
//! - an alert raised in a container appears in the open page without a
//!   reload (server-sent events);
//! - promoting the workload from the page (with the API token pasted once)
//!   changes its mode, and `lancet profile list` agrees;
//! - a connection the monitored profile does not list is drawn orange, and
//!   "add to profile" on its live alert adds it;
//! - without JavaScript the same pages are tables.
//!
//! Skipped, with the reason, when chromium or chromedriver are missing
//! (`scripts/setup.sh` installs them). With `LANCET_SCREENSHOTS=DIR` it
//! saves the screenshots the README shows.

mod common;

use common::*;
use fantoccini::{Client, Locator};
use lancet_testkit::browser::{browser, js, until, Driver};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

async fn screenshot(c: &Client, name: &str) {
    let Some(dir) = std::env::var_os("LANCET_SCREENSHOTS").map(PathBuf::from) else { return };
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

fn http_get(api: &str, path: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    agent.get(&format!("http://{api}{path}")).call().expect("GET").body_mut().read_to_string().expect("body")
}

#[test]
fn the_dashboard_in_a_real_browser() {
    skip_unless_ready!(true);
    if let Some(why) = lancet_testkit::browser::missing() {
        lancet_testkit::skip(&why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    let token = std::fs::read_to_string(state.join("api.token")).expect("the API token").trim().to_string();

    let net = Network::create(&unique("lancet-ui-net"));
    let srv = Container::start(
        &unique("lancet-ui-web"),
        &["--network", &net.0],
        &["sh", "-c", "httpd -p 9090 -h /www; exec httpd -f -p 8080 -h /www"],
    );
    let cli = Container::start(&unique("lancet-ui-client"), &["--network", &net.0], &["sleep", "600"]);
    let cli2 = Container::start(&unique("lancet-ui-batch"), &["--network", &net.0], &["sleep", "600"]);
    let ip = srv.ip();
    std::thread::sleep(Duration::from_millis(500));
    let fetch = |c: &Container, port: u16, n: u32| {
        let script = format!("for i in $(seq {n}); do timeout 3 wget -q -O /dev/null http://{ip}:{port}/index.html; done; true");
        assert!(c.exec(&["sh", "-c", &script]).status.success());
    };
    fetch(&cli, 8080, 4);
    fetch(&cli2, 8080, 2);
    // The host's own request: an edge from the host.
    let host_get = Command::new("timeout").args(["3", "wget", "-q", "-O", "/dev/null", &format!("http://{ip}:8080/index.html")]).status();
    if !host_get.is_ok_and(|s| s.success()) {
        eprintln!("note: the host could not fetch from the container (no wget?); the map shows container edges only");
    }

    let workload = {
        let v: Value = serde_json::from_str(&http_get(&agent.api, "/v1/containers")).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == cli.id.as_str())
            .map(|c| c["workload"].as_str().unwrap().to_string())
            .expect("the client's workload")
    };

    let driver = Driver::start();
    let driver_port = driver.port;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let profile_dir = dir.path().join("chromium");
    rt.block_on(async {
        let c = browser(driver_port, &profile_dir).await;
        let base = format!("http://{}", agent.api);
        let (cli_node, srv_node) = (format!("c:{}", cli.id), format!("c:{}", srv.id));

        // The map: the edge between the two containers, drawn by cytoscape.js.
        c.goto(&format!("{base}/ui/map?since=1h&container={}", srv.name)).await.unwrap();
        let edge_check = format!(
            "const cy = window.lancetMap; if (!cy) return null; const e = cy.edges().filter(e => e.data('source') === '{cli_node}' && e.data('target') === '{srv_node}' && e.data('port') === 8080); return e.length ? e[0].data() : null;"
        );
        let e = until("the client -> web edge on the map", Duration::from_secs(20), || async { Some(js(&c, &edge_check).await).filter(|v| !v.is_null()) }).await;
        assert_eq!(e["connections"], 4, "{e}");
        assert_eq!(e["verdict"], "learning");
        // Click it (a tap on the edge, as cytoscape.js dispatches a click):
        // its connections and the entry that allows it are shown.
        js(&c, &format!("window.lancetMap.edges().filter(e => e.data('source') === '{cli_node}' && e.data('target') === '{srv_node}' && e.data('port') === 8080)[0].emit('tap'); return true;")).await;
        let conns = c.find(Locator::Css("#edge-table td[data-field='connections']")).await.expect("edge details").text().await.unwrap();
        assert_eq!(conns, "4");
        let rule = c.find(Locator::Css("#edge-table td[data-field='decided by']")).await.unwrap().text().await.unwrap();
        assert!(rule.starts_with("profile outbound["), "{rule}");

        // The overview: the live feed is open; an alert raised in the
        // container appears without a reload.
        c.goto(&format!("{base}/ui/")).await.unwrap();
        until("the live feed to open", Duration::from_secs(10), || async {
            let t = c.find(Locator::Css("#live-state")).await.ok()?.text().await.ok()?;
            (t == "live").then_some(())
        })
        .await;
        js(&c, "window.lancetMarker = 1; return true;").await;
        assert!(cli.exec(&["sh", "-c", "echo e2e > /etc/lancet-e2e"]).status.success());
        let row = format!("#live tbody tr.new[data-rule='Write below etc'][data-container='{}']", cli.name);
        until("the alert in the live feed", Duration::from_secs(15), || async { c.find(Locator::Css(&row)).await.ok() }).await;
        assert_eq!(js(&c, "return window.lancetMarker;").await, json!(1), "the page was not reloaded");

        // Promote from the page, with the token pasted once.
        c.find(Locator::Css("#token")).await.unwrap().send_keys(&token).await.unwrap();
        c.find(Locator::Css("#token-save")).await.unwrap().click().await.unwrap();
        let state_text = c.find(Locator::Css("#auth-state")).await.unwrap().text().await.unwrap();
        assert!(state_text.contains("changes enabled"), "{state_text}");
        let button = format!("button[data-workload='{workload}'][data-mode='monitor']");
        c.find(Locator::Css(&button)).await.expect("the promote button").click().await.unwrap();
        until("the page to show monitor mode", Duration::from_secs(10), || async {
            let t = c.find(Locator::Css(&format!("tr[data-workload='{workload}'] td.mode"))).await.ok()?.text().await.ok()?;
            (t == "monitor").then_some(())
        })
        .await;
        let list = agent.cli(&["profile", "list"]);
        assert!(list.lines().any(|l| l.starts_with(&workload) && l.split_whitespace().nth(1) == Some("monitor")), "lancet profile list:\n{list}");

        // Monitor mode: a connection the profile does not list is orange on
        // the map, and alerted live with "add to profile".
        c.goto(&format!("{base}/ui/")).await.unwrap();
        until("the live feed to open again", Duration::from_secs(10), || async {
            let t = c.find(Locator::Css("#live-state")).await.ok()?.text().await.ok()?;
            (t == "live").then_some(())
        })
        .await;
        fetch(&cli, 9090, 1);
        let add = format!("#live tbody tr.new[data-container='{}'] button[data-alert]", cli.name);
        let button = until("a live alert with 'add to profile'", Duration::from_secs(15), || async { c.find(Locator::Css(&add)).await.ok() }).await;
        if std::env::var_os("LANCET_SCREENSHOTS").is_some() {
            // The whole page, for the README.
            c.set_window_size(1440, 2200).await.unwrap();
            screenshot(&c, "dashboard.png").await;
            c.set_window_size(1440, 1000).await.unwrap();
        }
        button.click().await.unwrap();
        until("the entry to be added", Duration::from_secs(10), || async {
            let t = c.find(Locator::Css(&add)).await.ok()?.text().await.ok()?;
            (t == "added").then_some(())
        })
        .await;
        let review: Value = serde_json::from_str(&http_get(&agent.api, &format!("/v1/profiles/{workload}/review"))).unwrap();
        assert!(review["outbound"].as_array().unwrap().iter().any(|f| f["port"] == 9090), "9090 added to the profile: {review}");

        c.goto(&format!("{base}/ui/map?since=1h&container={}", srv.name)).await.unwrap();
        let unlisted = format!(
            "const cy = window.lancetMap; if (!cy) return null; const e = cy.edges().filter(e => e.data('source') === '{cli_node}' && e.data('port') === 9090); return e.length ? e[0].data('verdict') : null;"
        );
        let v = until("the 9090 edge", Duration::from_secs(20), || async { Some(js(&c, &unlisted).await).filter(|v| !v.is_null()) }).await;
        assert_eq!(v, "unlisted");
        // The picture: the details of the busiest edge open.
        js(&c, &format!("window.lancetMap.edges().filter(e => e.data('source') === '{cli_node}' && e.data('port') === 8080)[0].emit('tap'); return true;")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        screenshot(&c, "map.png").await;
        c.close().await.unwrap();
    });

    // Without JavaScript: the same pages are tables.
    let page = http_get(&agent.api, &format!("/ui/map?container={}", srv.name));
    assert!(page.contains("<table id=\"edges\"") && page.contains(&format!("data-source=\"{}\"", cli.name)), "{page}");
    let page = http_get(&agent.api, "/ui/");
    assert!(page.contains("<table id=\"workloads\"") && page.contains(&cli.name));
}
