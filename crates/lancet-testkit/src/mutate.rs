//! Mutations for the property tests of parsers: a valid input changed the
//! ways a hostile or broken writer would change it. [`edits`] work on the
//! characters of a document (YAML, JSON, text), so the result is still a
//! `&str`; [`byte_edits`] on the bytes of a binary record (the kernel's,
//! bbolt's).

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub enum Edit {
    /// One character replaced.
    Replace(Index, char),
    /// A fragment inserted (syntax, huge numbers, long strings, deep nesting).
    Insert(Index, String),
    /// Up to n characters removed.
    Delete(Index, usize),
    /// Everything from here on removed.
    Truncate(Index),
    /// A line repeated after another (duplicate fields, entries).
    DupLine(Index, Index),
    /// Two lines exchanged.
    SwapLines(Index, Index),
}

/// Fragments that mean something to YAML or JSON parsers, or are extreme.
fn fragment() -> impl Strategy<Value = String> {
    let fixed: Vec<String> = [
        ":",
        ": ",
        "- ",
        "\n",
        "\n  ",
        "  ",
        "\t",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "!!binary ",
        "!tag ",
        "'",
        "\"",
        "#",
        "|\n",
        ">\n",
        "---\n",
        "...\n",
        "~",
        "null",
        "true",
        "? ",
        "%YAML 1.1\n",
        "<<: *a\n",
        "\\u0000",
        "\\ud800",
        "\u{0}",
        "\u{feff}",
        "\u{7f}",
        "é",
        "99999999999999999999999999999",
        "18446744073709551616",
        "4294967296",
        "65536",
        "-1",
        "-0",
        "1e400",
        "1e-400",
        "NaN",
        ".inf",
        "0x1F",
        "0o17",
        "1_000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        4 => proptest::sample::select(fixed),
        2 => any::<char>().prop_map(String::from),
        2 => "[ -~]{0,12}",
        1 => (1usize..20_000).prop_map(|n| "x".repeat(n)),
        1 => (1usize..3_000).prop_map(|n| "[".repeat(n)),
        1 => (1usize..1_000).prop_map(|n| "{a: ".repeat(n)),
        1 => (1usize..1_000).prop_map(|n| "- ".repeat(n)),
    ]
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Edit::Replace(i, c)),
        3 => (any::<Index>(), fragment()).prop_map(|(i, s)| Edit::Insert(i, s)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::DupLine(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// 1 to `max` edits.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(), 1..=max)
}

pub fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for e in edits {
        match e {
            Edit::Replace(i, c) if !s.is_empty() => {
                let i = i.index(s.len());
                s[i] = *c;
            }
            Edit::Insert(i, frag) => {
                let i = i.index(s.len() + 1);
                s.splice(i..i, frag.chars());
            }
            Edit::Delete(i, n) if !s.is_empty() => {
                let i = i.index(s.len());
                let end = (i + n).min(s.len());
                s.drain(i..end);
            }
            Edit::Truncate(i) => {
                let i = i.index(s.len() + 1);
                s.truncate(i);
            }
            Edit::DupLine(a, b) | Edit::SwapLines(a, b) => {
                let text: String = s.iter().collect();
                let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
                if lines.is_empty() {
                    continue;
                }
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                if matches!(e, Edit::DupLine(..)) {
                    let mut line = lines[a].clone();
                    if !line.ends_with('\n') {
                        line.push('\n');
                    }
                    lines.insert(b, line);
                } else {
                    lines.swap(a, b);
                }
                s = lines.concat().chars().collect();
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

/// Arbitrary text weighted towards what parsers of YAML and JSON branch on.
pub fn yamlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            3 => "[a-zA-Z0-9_./-]{0,10}",
            3 => proptest::sample::select(vec![":", ": ", "- ", "\n", "  ", "[", "]", "{", "}", ",", "&a", "*a", "!", "'", "\"", "#", "|", ">", "---", "?", "%", "@", "`"]).prop_map(str::to_string),
            1 => any::<String>(),
        ],
        0..64,
    )
    .prop_map(|v| v.concat())
}
/// Byte-level mutation of a valid buffer: flips, inserts, deletes, a cut.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

pub fn byte_edits(max: usize) -> impl Strategy<Value = Vec<ByteEdit>> {
    proptest::collection::vec(
        prop_oneof![
            4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
            1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
            1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
            1 => any::<Index>().prop_map(ByteEdit::Truncate),
        ],
        1..=max,
    )
}

pub fn apply_bytes(data: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut b = data.to_vec();
    for e in edits {
        match e {
            ByteEdit::Set(i, v) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            ByteEdit::Insert(i, v) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            ByteEdit::Delete(i, n) if !b.is_empty() => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            ByteEdit::Truncate(i) => {
                let i = i.index(b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}
