//! The dashboard's HTML: escaping, the page frame and tables. Pages are
//! rendered on the agent from its own data; every value is escaped here,
//! and the page runs no inline script (the Content-Security-Policy allows
//! only the agent's own `/ui/static/` files).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use lancet_engine::output::rfc3339_nanos;
use std::fmt::Write;

/// HTML text: `&`, `<`, `>`, `"` and `'` escaped.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A URL path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `2026-11-30 18:45:31` (UTC), or empty for 0.
pub fn time(ns: u64) -> String {
    if ns == 0 {
        return String::new();
    }
    rfc3339_nanos(ns).get(..19).unwrap_or("").replace('T', " ")
}

/// A 12-character digest for people.
pub fn short(s: &str) -> &str {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.get(..12).unwrap_or(hex)
}

/// One cell: already-escaped HTML, with an optional class.
pub struct Cell {
    pub html: String,
    pub class: &'static str,
}

impl Cell {
    pub fn text(s: &str) -> Cell {
        Cell { html: esc(s), class: "" }
    }
    pub fn num(n: u64) -> Cell {
        Cell { html: n.to_string(), class: "num" }
    }
    pub fn html(html: String) -> Cell {
        Cell { html, class: "" }
    }
    pub fn class(mut self, class: &'static str) -> Cell {
        self.class = class;
        self
    }
}

/// A table; `id` names it, each row may carry attributes (already
/// escaped), and `empty` is shown when there is no row.
pub fn table(id: &str, head: &[&str], rows: Vec<(String, Vec<Cell>)>, empty: &str) -> String {
    let mut o = String::new();
    let _ = write!(o, "<table id=\"{}\"><thead><tr>", esc(id));
    for h in head {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(o, "<tr id=\"{}-empty\"><td colspan=\"{}\" class=\"muted\">{}</td></tr>", esc(id), head.len(), esc(empty));
    }
    for (attrs, cells) in rows {
        let _ = write!(o, "<tr{attrs}>");
        for c in cells {
            if c.class.is_empty() {
                let _ = write!(o, "<td>{}</td>", c.html);
            } else {
                let _ = write!(o, "<td class=\"{}\">{}</td>", c.class, c.html);
            }
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
    o
}

/// Which tab a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Map,
    Alerts,
}

/// The whole page around `body`. `graph`: load the graph library.
pub fn page(title: &str, tab: Tab, body: &str, graph: bool) -> Response {
    let nav = [(Tab::Overview, "/ui/", "Overview"), (Tab::Map, "/ui/map", "Map"), (Tab::Alerts, "/ui/alerts", "Alerts")]
        .iter()
        .map(|(t, href, name)| format!("<a href=\"{href}\"{}>{name}</a>", if *t == tab { " class=\"active\"" } else { "" }))
        .collect::<String>();
    let graph = if graph {
        format!(
            "<script src=\"/ui/static/cytoscape.min.js\" integrity=\"{}\" crossorigin=\"anonymous\"></script>",
            env!("LANCET_CYTOSCAPE_SRI")
        )
    } else {
        String::new()
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>lancet · {title}</title><link rel=\"stylesheet\" href=\"/ui/static/app.css\"></head><body>\
         <header><span class=\"brand\">lancet</span><nav>{nav}</nav>\
         <div id=\"auth\"><span id=\"auth-state\" class=\"muted\">read-only</span>\
         <input id=\"token\" type=\"password\" placeholder=\"API token, for changes\" autocomplete=\"off\" size=\"24\">\
         <button id=\"token-save\" type=\"button\">Use token</button><button id=\"token-forget\" type=\"button\" hidden>Forget</button></div></header>\
         <main>{body}</main><div id=\"flash\" role=\"status\"></div>{graph}<script src=\"/ui/static/app.js\"></script></body></html>\n",
        title = esc(title),
    );
    html_response(html)
}

/// An HTML response with the dashboard's security headers: only its own
/// scripts, styles and API; never framed; no referrer.
pub fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
        assert_eq!(seg("sha256:ab/c d"), "sha256%3Aab%2Fc%20d");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(time(0), "");
        assert_eq!(time(1_000_000_000), "1970-01-01 00:00:01");
    }

    #[test]
    fn tables_escape_and_say_when_empty() {
        let t = table("t", &["A"], vec![], "nothing <yet>");
        assert!(t.contains("id=\"t-empty\"") && t.contains("nothing &lt;yet&gt;"));
        let t = table("t", &["A", "B"], vec![(" data-x=\"1\"".into(), vec![Cell::text("<b>"), Cell::num(3)])], "");
        assert!(t.contains("<tr data-x=\"1\"><td>&lt;b&gt;</td><td class=\"num\">3</td></tr>"));
    }
}
