//! Query parameters, checked: every route names the parameters it takes,
//! and anything else — an unknown name, a value that does not parse, a
//! name given twice — is refused with 400 and the reason, rather than
//! ignored (a typo such as `contianer=web` would otherwise quietly show
//! everything).

use crate::config::parse_duration;
use std::collections::BTreeMap;

/// A 400 with its reason.
pub type Bad = (u16, String);

fn bad(reason: String) -> Bad {
    (400, reason)
}

/// `%XX` and `+` decoded; invalid escapes are refused.
fn decode(s: &str) -> Result<String, Bad> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    // Near what, in characters: the bytes after `%` may be
                    // the middle of one.
                    _ => {
                        let near: String = s[i..].chars().take(3).collect();
                        return Err(bad(format!("malformed percent-escape in the query string near {near:?}")));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("the query string is not UTF-8".into()))
}

/// The parameters of one request, after checking them against what the
/// route takes.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `query` (without the `?`), refusing names not in `allowed`.
    /// A name with an empty value counts as not given: that is how an HTML
    /// form without JavaScript sends a field left blank.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, Bad> {
        let mut m = BTreeMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            if !allowed.contains(&k.as_str()) {
                let takes = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(bad(format!("unknown query parameter {k:?} (this endpoint takes: {takes})")));
            }
            if m.insert(k.clone(), v).is_some() {
                return Err(bad(format!("query parameter {k:?} is given more than once")));
            }
        }
        m.retain(|_, v| !v.is_empty());
        Ok(Params(m))
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A text (never empty: empty values are not given).
    pub fn text(&self, name: &str) -> Result<Option<String>, Bad> {
        Ok(self.str(name).map(str::to_string))
    }

    /// A row limit: 1 to `max` (the store reads 0 as "no limit", which a
    /// reader must not be able to ask for).
    pub fn limit(&self, name: &str, max: u64) -> Result<Option<usize>, Bad> {
        match self.number(name, max)? {
            Some(0) => Err(bad(format!("{name}: at least 1"))),
            n => Ok(n.map(|n| n as usize)),
        }
    }

    /// An unsigned integer no larger than `max`.
    pub fn number(&self, name: &str, max: u64) -> Result<Option<u64>, Bad> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                Ok(_) => Err(bad(format!("{name}: at most {max}, not {v}"))),
                Err(_) => Err(bad(format!("{name}: expected a whole number, got {v:?}"))),
            },
        }
    }

    /// A time as nanoseconds since the epoch: either `since_ns` (a number)
    /// or `since` (a duration back from `now`, such as `30m`, `1h`, `7d`).
    pub fn since_ns(&self, now: u64) -> Result<Option<u64>, Bad> {
        if self.str("since").is_some() && self.str("since_ns").is_some() {
            return Err(bad("give either since or since_ns, not both".into()));
        }
        if let Some(v) = self.str("since") {
            let d = parse_duration(v).map_err(|e| bad(format!("since: {e:#} (e.g. 30m, 1h, 7d)")))?;
            return Ok(Some(now.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))));
        }
        self.number("since_ns", u64::MAX)
    }

    /// One of `choices`.
    pub fn choice<'a>(&self, name: &str, choices: &[&'a str]) -> Result<Option<&'a str>, Bad> {
        match self.str(name) {
            None => Ok(None),
            Some(v) => choices
                .iter()
                .find(|c| **c == v)
                .copied()
                .map(Some)
                .ok_or_else(|| bad(format!("{name}: expected one of {}, got {v:?}", choices.join(", ")))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_parse() {
        let p =
            Params::parse(Some("since=1h&container=web%2D1&limit=10&format=dot"), &["since", "since_ns", "container", "limit", "format"])
                .unwrap();
        assert_eq!(p.since_ns(10_000_000_000_000).unwrap(), Some(10_000_000_000_000 - 3_600_000_000_000));
        assert_eq!(p.text("container").unwrap().as_deref(), Some("web-1"));
        assert_eq!(p.number("limit", 100).unwrap(), Some(10));
        assert_eq!(p.choice("format", &["json", "dot"]).unwrap(), Some("dot"));
        assert!(Params::parse(None, &[]).is_ok());
        assert!(Params::parse(Some(""), &[]).is_ok());
        // A form's blank fields are not given.
        let p = Params::parse(Some("since=&container="), &["since", "container"]).unwrap();
        assert_eq!((p.text("container").unwrap(), p.since_ns(5).unwrap()), (None, None));
        let p = Params::parse(Some("limit=5"), &["limit"]).unwrap();
        assert_eq!(p.limit("limit", 10).unwrap(), Some(5));
        let p = Params::parse(Some("limit=0"), &["limit"]).unwrap();
        assert!(p.limit("limit", 10).unwrap_err().1.contains("at least 1"));
    }

    #[test]
    fn everything_else_is_a_400_with_the_reason() {
        let allowed = ["since", "since_ns", "limit", "format", "container"];
        let reason = |q: &str| -> String {
            let p = match Params::parse(Some(q), &allowed) {
                Err((400, r)) => return r,
                Err(e) => panic!("{e:?}"),
                Ok(p) => p,
            };
            let r: Result<(), Bad> = (|| {
                p.since_ns(1)?;
                p.number("limit", 100)?;
                p.choice("format", &["json"])?;
                p.text("container")?;
                Ok(())
            })();
            match r {
                Err((400, r)) => r,
                other => panic!("{q}: {other:?}"),
            }
        };
        assert!(reason("contianer=web").contains("unknown query parameter \"contianer\""));
        assert!(reason("limit=ten").contains("expected a whole number"));
        assert!(reason("limit=1000").contains("at most 100"));
        assert!(reason("limit=-1").contains("expected a whole number"));
        assert!(reason("since=yesterday").contains("since:"));
        assert!(reason("since=1h&since_ns=5").contains("not both"));
        assert!(reason("format=xml").contains("expected one of json"));
        assert!(reason("limit=1&limit=2").contains("more than once"));
        assert!(reason("container=%zz").contains("percent-escape"));
        assert!(reason("container=%e2%82").contains("not UTF-8"));
        // A raw multi-byte character after `%` (what a client may send
        // unencoded) is a 400, not a slice inside a character.
        let r = reason("container=%€");
        assert!(r.contains("percent-escape in the query string near \"%€\""), "{r}");
        assert!(reason("container=%\u{10348}x").contains("percent-escape"));
        assert!(reason("container=%ff").contains("not UTF-8"));
    }
}
