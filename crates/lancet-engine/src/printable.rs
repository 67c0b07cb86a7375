//! Text for a terminal from strings a container or a remote client chose
//! (paths, command lines, container names, refused request paths): control
//! characters are shown escaped, so nothing printed can move the cursor,
//! recolour the screen or paint a fake row.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1) escaped as `\n`, `\t`,
/// `\r` or `\u{…}`, and backslashes doubled; borrowed when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(printable("/var/lib/redis"), Cow::Borrowed(_)));
        assert_eq!(printable("a\x1b[2K\rok\n"), "a\\u{1b}[2K\\rok\\n");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("a\\u{1b}"), "a\\\\u{1b}");
        assert_eq!(printable("été\x7f"), "été\\u{7f}");
    }

    proptest::proptest! {
        #[test]
        fn nothing_printable_is_a_control_character(s in ".*") {
            proptest::prop_assert!(!printable(&s).chars().any(char::is_control));
        }
    }
}
