//! The fleet's dashboard in a real headless chromium (the agent's
//! dashboard test harness, `lancet_testkit::browser`), against `lancet
//! hub` on two nodes' published data: refused without the token, signed
//! in with it; then its nodes, a workload with its nodes and mode, the
//! map's edge across nodes, and the alerts filtered by node.

use super::hub_fleet::{two_nodes, wait_json, D3};
use super::*;
use fantoccini::Locator;
use lancet_testkit::browser::{browser, js, until, Driver};

#[test]
fn the_fleet_dashboard_in_a_real_browser() {
    if let Some(why) = lancet_testkit::browser::missing() {
        lancet_testkit::skip(&why);
        return;
    }
    let Some(s) = servers(1) else { return };
    let url = s[0].url();
    let _nodes = two_nodes(&url);
    let hub = TestHub::on(&url);
    // Everything the page shows has reached the hub.
    wait_json(&hub, "/v1/workloads", "web on both nodes", |v| {
        v.as_array().is_some_and(|a| a.iter().any(|w| w["workload"] == D && w["nodes"].as_array().is_some_and(|n| n.len() == 2)))
    });
    wait_json(&hub, "/v1/map", "both edges", |v| v["edges"].as_array().is_some_and(|e| e.len() == 2));
    wait_json(&hub, "/v1/alerts", "both alerts", |v| v.as_array().is_some_and(|a| a.len() == 2));
    let (status, page) = hub.request("/", None).unwrap();
    assert_eq!(status, 401);
    assert!(page.contains("<form") && !page.contains("web-3") && !page.contains("Drift on"), "{page}");

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{}", hub.port);
    let web_a = format!("c:{}", "1".repeat(64));
    let db_b = format!("c:{}", "4".repeat(64));
    runtime().block_on(async {
        let c = browser(driver.port, profile.path()).await;
        // Refused without the token: the sign-in form, nothing of the fleet.
        c.goto(&format!("{base}/")).await.unwrap();
        let refused = c.find(Locator::Css("#refused")).await.expect("the refusal").text().await.unwrap();
        assert!(refused.contains("needs its token"), "{refused}");
        assert!(c.find(Locator::Css("#nodes")).await.is_err());
        c.find(Locator::Css("#token")).await.unwrap().send_keys(&hub.token).await.unwrap();
        c.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();

        // The nodes.
        for n in ["a", "b"] {
            until(&format!("node {n}"), Duration::from_secs(10), || async {
                c.find(Locator::Css(&format!("#nodes tr[data-node='{n}']"))).await.ok()
            })
            .await;
        }
        // A workload with its nodes and its mode.
        let row = format!("#workloads tr[data-workload='{D}'][data-nodes='a b']");
        let mode = c.find(Locator::Css(&format!("{row} td.mode"))).await.expect("web's row").text().await.unwrap();
        assert!(mode.starts_with("protect"), "{mode}");
        let running = c.find(Locator::Css(&format!("{row} td.running"))).await.unwrap().text().await.unwrap();
        assert!(running.contains("a protect ×1") && running.contains("b protect ×1 web-3"), "{running}");
        let db = c.find(Locator::Css(&format!("#workloads tr[data-workload='{D3}'] td.running"))).await.unwrap().text().await.unwrap();
        assert!(db.contains("b monitor ×1 db-4"), "{db}");
        // The map: the edge from node a's web to node b's database, drawn.
        let edge = format!(
            "const cy = window.lancetMap; if (!cy) return null; const e = cy.edges().filter(e => e.data('source') === '{web_a}' && e.data('target') === '{db_b}'); return e.length ? e[0].data() : null;"
        );
        let e = until("the edge across nodes on the map", Duration::from_secs(20), || async {
            Some(js(&c, &edge).await).filter(|v| !v.is_null())
        })
        .await;
        assert_eq!((e["port"].as_u64(), e["connections"].as_u64()), (Some(5432), Some(7)), "{e}");
        let parent = js(&c, &format!("return window.lancetMap.getElementById('{db_b}').data('parent');")).await;
        assert_eq!(parent, "n:b");
        if let Some(dir) = std::env::var_os("LANCET_SCREENSHOTS") {
            // The whole page, to look at.
            c.set_window_size(1440, 2400).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(Path::new(&dir).join("hub.png"), c.screenshot().await.unwrap()).unwrap();
            c.set_window_size(1440, 1000).await.unwrap();
        }
        let table_edge = c.find(Locator::Css("#edges tr[data-source-node='a'][data-target-node='b'][data-target='db-4']")).await;
        assert!(table_edge.is_ok(), "the edge in the table");
        // Alerts filtered by node, from the form.
        c.find(Locator::Css("#filter-node option[value='b']")).await.unwrap().click().await.unwrap();
        c.find(Locator::Css("#filter-show")).await.unwrap().click().await.unwrap();
        until("the alerts of node b only", Duration::from_secs(10), || async {
            let url = c.current_url().await.ok()?;
            url.query()?.contains("node=b").then_some(())
        })
        .await;
        let nodes = js(&c, "return Array.from(document.querySelectorAll('#alerts tbody tr')).map(r => r.dataset.node);").await;
        assert_eq!(nodes, serde_json::json!(["b"]));
        let rule = c.find(Locator::Css("#alerts tr[data-node='b'] td:nth-child(4)")).await.unwrap().text().await.unwrap();
        assert_eq!(rule, "Drift on b");
        // The page's own API calls carry the cookie; without it, refused.
        let bare = js(&c, "return fetch('/v1/nodes', {credentials: 'omit'}).then(r => r.status);").await;
        assert_eq!(bare, 401);
        c.close().await.unwrap();
    });
}
