//! A linear pre-check of YAML documents before serde_norway reads them.
//!
//! Why: libyaml's scanner (under serde_norway) checks every pending simple
//! key at every token, and each open flow collection (`[`, `{`) keeps one,
//! so a document of N nested openers costs O(N²): 64 KiB of `{a: ` took
//! ~2 s, a 2 MB API body would take hours, and profile imports are
//! answered on the agent's event loop. serde_norway refuses anything
//! nested deeper than 128 anyway (`recursion limit exceeded`), but only
//! after the scanner has paid. This finds the first flow opener deeper
//! than that in one pass, by tokenising as libyaml does where it matters
//! (quoted scalars, block scalars, comments, plain scalars, which may hold
//! `[` and `{`), so no document serde_norway could read is refused.

/// Where a serde_norway error is, as 1-based line and column (in
/// characters) counted the way editors count: lines end at `\n` only.
/// libyaml also ends lines at a lone `\r`, U+0085, U+2028 and U+2029, so its
/// own line numbers can point past a file's last line; its byte index does
/// not depend on that.
pub fn error_position(text: &str, e: &serde_norway::Error) -> Option<(usize, usize)> {
    let mut i = e.location()?.index().min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    let before = &text[..i];
    let start = before.rfind('\n').map_or(0, |p| p + 1);
    Some((before.bytes().filter(|&b| b == b'\n').count() + 1, before[start..].chars().count() + 1))
}

/// serde_norway's own nesting limit: a document whose flow collections
/// nest deeper cannot be read whatever its content.
pub(crate) const MAX_FLOW_DEPTH: usize = 128;

/// The message of a document [`too_deep`] refuses.
pub(crate) const TOO_DEEP: &str = "nested more than 128 levels deep";

/// The 1-based line and column (in characters) of the first `[` or `{`
/// that opens a flow collection more than [`MAX_FLOW_DEPTH`] deep.
pub(crate) fn too_deep(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut line = 1;
    let mut line_start = 0;
    let mut depth = 0usize;
    // Column of the token that starts the current block node on this line
    // (a key, a `-`), which a block scalar's content must be indented past.
    let mut node_col = 0usize;
    let mut node_start = true;
    let col = |line_start: usize, i: usize| b[line_start..i].iter().filter(|&&c| c & 0xc0 != 0x80).count();
    let blank = |i: usize| i >= n || matches!(b[i], b' ' | b'\t' | b'\r' | b'\n');
    let flow_ind = |c: u8| matches!(c, b',' | b'[' | b']' | b'{' | b'}');
    while i < n {
        let c = b[i];
        match c {
            b'\n' => {
                i += 1;
                line += 1;
                line_start = i;
                if depth == 0 {
                    node_start = true;
                }
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            // Only reached at a token boundary (after blanks or a line
            // start): a comment.
            b'#' => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let here = col(line_start, i);
        if depth == 0 && node_start && !matches!(c, b'|' | b'>') {
            node_col = here;
        }
        node_start = false;
        match c {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some((line, here + 1));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => i += 1,
            b'\'' => {
                // '' is a quote inside; the scalar may span lines.
                i += 1;
                while i < n {
                    if b[i] == b'\'' {
                        if i + 1 < n && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < n {
                    match b[i] {
                        b'\\' => i += 1,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\n' => {
                            line += 1;
                            line_start = i + 1;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                // The escape may have stepped onto a newline.
                i = i.min(n);
            }
            b'|' | b'>' if depth == 0 => {
                // A block scalar: the rest of its line (indicators, a
                // comment), then every blank line and every line indented
                // past the node it belongs to (at least one space, as
                // libyaml wants even at the root).
                let parent = node_col;
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
                while i < n {
                    // At a '\n': look at the next line.
                    let start = i + 1;
                    let mut j = start;
                    while j < n && b[j] == b' ' {
                        j += 1;
                    }
                    let empty = j >= n || matches!(b[j], b'\n' | b'\r');
                    if !empty && j - start <= parent {
                        break;
                    }
                    i = j;
                    while i < n && b[i] != b'\n' {
                        i += 1;
                    }
                    line += 1;
                    line_start = start;
                }
            }
            b'-' | b'?' | b':' if blank(i + 1) || (depth > 0 && c == b':' && flow_ind(b[i + 1])) => {
                if depth == 0 && c != b':' {
                    node_start = true;
                }
                i += 1;
            }
            b'-' if depth == 0 && here == 0 && b[i..].starts_with(b"---") && blank(i + 3) => {
                i += 3;
                node_col = 0;
                continue;
            }
            b'&' | b'*' | b'!' => {
                // Anchors, aliases, tags: up to a blank (or, in flow, an indicator).
                i += 1;
                while i < n && !blank(i) && !(depth > 0 && flow_ind(b[i])) {
                    i += 1;
                }
                if depth == 0 && c != b'*' {
                    // The node they decorate follows.
                    node_start = false;
                }
            }
            _ => {
                // A plain scalar: up to `: `, ` #` or the line's end; in
                // flow context also up to an indicator.
                while i < n {
                    let d = b[i];
                    if d == b'\n' {
                        break;
                    }
                    if d == b':' && (blank(i + 1) || (depth > 0 && flow_ind(b[i + 1]))) {
                        break;
                    }
                    if d == b'#' && i > 0 && matches!(b[i - 1], b' ' | b'\t') {
                        break;
                    }
                    if depth > 0 && flow_ind(d) {
                        break;
                    }
                    i += 1;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_reads(text: &str) -> bool {
        serde_norway::from_str::<serde_norway::Value>(text).is_ok()
    }

    #[test]
    fn errors_are_placed_on_the_lines_an_editor_shows() {
        let at = |text: &str| error_position(text, &serde_norway::from_str::<serde_norway::Value>(text).unwrap_err());
        // libyaml ends a line at U+2028 too (it says line 2 of a one-line
        // file); an editor shows one line.
        assert_eq!(at("Σ: 𞺫\u{2028}ⶨ"), Some((1, 7)));
        assert_eq!(at("a: 1\r\nb: [\r\n"), Some((3, 1)));
        assert_eq!(at("a: 1\nb: 2\n  c: 3\n"), Some((3, 4)));
    }

    #[test]
    fn deep_flow_nesting_is_found_where_it_opens() {
        let deep = format!("a: {}x{}", "[".repeat(MAX_FLOW_DEPTH + 1), "]".repeat(MAX_FLOW_DEPTH + 1));
        assert_eq!(too_deep(&deep), Some((1, 4 + MAX_FLOW_DEPTH)));
        assert!(!value_reads(&deep));
        let ok = format!("a: {}x{}", "[".repeat(MAX_FLOW_DEPTH - 2), "]".repeat(MAX_FLOW_DEPTH - 2));
        assert_eq!(too_deep(&ok), None);
        assert!(value_reads(&ok));
        assert_eq!(too_deep(&format!("x:\n  y: {}", "{a: ".repeat(200))).map(|p| p.0), Some(2));
        // Openers inside scalars, comments and block scalars are text.
        for text in [
            format!("a: '{}'\n", "[".repeat(300)),
            format!("a: \"{}\\\"{}\"\n", "[".repeat(150), "{".repeat(150)),
            format!("a: b{}\n", "[".repeat(300)),
            format!("a: b # {}\n", "[".repeat(300)),
            format!("- path: |-\n{}", "    [\n".repeat(300)),
            format!("a:\n  b: >\n{}  c: 1\n", "   {\n".repeat(300)),
            format!("|\n{}", " [\n".repeat(300)),
            format!("--- |\n{}", " {\n".repeat(300)),
            format!("{}\n", "/usr/bin/[ ".repeat(300)),
        ] {
            assert_eq!(too_deep(&text), None, "{text:.80}");
            assert!(value_reads(&text), "{text:.80}");
        }
        // A block scalar ends where the indentation comes back (at the
        // root its content needs a space too).
        for text in [format!("a: |\n  text\nb: {}", "[".repeat(200)), format!("|\n{}", "[\n".repeat(300))] {
            assert!(too_deep(&text).is_some(), "{text:.80}");
            assert!(!value_reads(&text), "{text:.80}");
        }
    }

    #[test]
    fn the_check_is_linear() {
        let text = "{a: ".repeat(1 << 20);
        let t = std::time::Instant::now();
        assert_eq!(too_deep(&text), Some((1, 4 * MAX_FLOW_DEPTH + 1)));
        let text = "[a, ".repeat(1 << 20);
        assert!(too_deep(&text).is_some());
        let text = format!("a: |\n{}", "  [[[[[[[[[[\n".repeat(1 << 16));
        assert_eq!(too_deep(&text), None);
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// Nested flow collections with scalars of every style between.
    fn nested() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "[a-z0-9/._-]{1,6}",
            "'[^']{0,6}'",
            "\"[a-z\\[\\]{} ]{0,6}\"",
            Just("[]".to_string()),
            Just("{}".to_string()),
            "/usr/bin/\\[",
        ];
        leaf.prop_recursive(160, 2000, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 1..4).prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec(("[a-z]{1,4}", inner), 1..3)
                    .prop_map(|v| format!("{{{}}}", v.iter().map(|(k, x)| format!("{k}: {x}")).collect::<Vec<_>>().join(", "))),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Never refuses a document serde_norway reads.
        #[test]
        fn never_refuses_what_serde_norway_reads(text in lancet_testkit::mutate::yamlish()) {
            if too_deep(&text).is_some() {
                prop_assert!(!value_reads(&text), "{:?}", text);
            }
        }

        #[test]
        fn nested_flow_documents_are_judged_like_serde_norway(doc in nested(), key in "[a-z]{1,5}", wrap in 0usize..3) {
            let text = match wrap {
                0 => doc,
                1 => format!("{key}: {doc}\n"),
                _ => format!("- {key}: |\n    [[{{\n  {key}2: {doc}\n"),
            };
            if too_deep(&text).is_some() {
                prop_assert!(!value_reads(&text), "{:?}", text);
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Chains of 100 to 200 levels with siblings of every style: the
        /// deep ones are refused by the check exactly when serde_norway
        /// reaches its limit.
        #[test]
        fn deep_chains_are_found(levels in proptest::collection::vec((0u8..3, "[a-z]{1,3}", prop_oneof!["'[\\[{]{0,3}'", "\"[\\[{]{0,3}\"", "[a-z]{1,3}"]), 100..200)) {
            let mut doc = "x".to_string();
            for (shape, key, sibling) in levels.iter().rev() {
                doc = match shape {
                    0 => format!("[{doc}]"),
                    1 => format!("[{sibling}, {doc}, {sibling}]"),
                    _ => format!("{{{key}: {doc}, {key}x: {sibling}}}"),
                };
            }
            let depth = levels.len();
            prop_assert_eq!(too_deep(&doc).is_some(), depth > MAX_FLOW_DEPTH, "{}", depth);
            prop_assert_eq!(value_reads(&doc), depth <= MAX_FLOW_DEPTH, "{}", depth);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// What serde_norway writes (strings with brackets and newlines
        /// become quoted or block scalars) is never refused.
        #[test]
        fn serde_norway_output_passes(strings in proptest::collection::vec("[\\[\\]{}a-z\n '\"#:|>-]{0,40}", 0..60)) {
            let doc: std::collections::BTreeMap<String, Vec<String>> = [("k".to_string(), strings.clone()), ("l".to_string(), strings)].into();
            let text = serde_norway::to_string(&doc).unwrap();
            prop_assert_eq!(too_deep(&text), None, "{}", text);
        }
    }
}
