//! `/proc/<pid>/mountinfo`, parsed without trusting it: every path field
//! comes from inside a container (a directory may be named `a b\n- x`), so
//! the parser never panics, unescapes the kernel's octal escapes (`\040`
//! for a space, `\011`, `\012`, `\134`) and skips lines it cannot read
//! instead of guessing.

/// One mount, as `mountinfo` describes it (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique per mount for its lifetime (statx `STATX_MNT_ID`, fdinfo
    /// `mnt_id`).
    pub id: u64,
    pub parent: u64,
    /// `major:minor` of the filesystem.
    pub dev: (u32, u32),
    /// The directory of the filesystem that forms this mount's root (a
    /// file for a file bind mount such as `/etc/hosts`).
    pub root: String,
    /// Where it is mounted, relative to the reading process's root.
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Superblock options, still escaped (split on `,`, then unescape each
    /// value: overlayfs escapes `,` `=` space tab newline and `\` inside
    /// values).
    pub super_options: String,
}

impl MountInfo {
    /// The mount itself is read-only (not the filesystem: a read-only bind
    /// of a writable filesystem is read-only).
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Why one line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountInfoError {
    #[error("too few fields")]
    TooFewFields,
    #[error("no ` - ` separator before the filesystem type")]
    NoSeparator,
    #[error("bad number in field {0}")]
    BadNumber(&'static str),
}

/// Undoes the kernel's `\ooo` escapes (seq_file `mangle`: space, tab,
/// newline and backslash). Anything else, including a backslash not followed
/// by three octal digits, is kept as it is. Invalid UTF-8 becomes U+FFFD.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's escaping of a path field (for tests and fixtures).
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// One line of `mountinfo`.
pub fn parse_line(line: &str) -> Result<MountInfo, MountInfoError> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 10 {
        return Err(MountInfoError::TooFewFields);
    }
    // Optional fields (`shared:1 master:2`) end at a lone "-"; the escaping
    // guarantees no path field is a lone "-" with spaces around it.
    let sep = fields.iter().skip(6).position(|f| *f == "-").map(|p| p + 6).ok_or(MountInfoError::NoSeparator)?;
    if fields.len() < sep + 3 {
        return Err(MountInfoError::TooFewFields);
    }
    let num = |s: &str, what: &'static str| s.parse::<u64>().map_err(|_| MountInfoError::BadNumber(what));
    let (major, minor) = fields[2].split_once(':').ok_or(MountInfoError::BadNumber("major:minor"))?;
    Ok(MountInfo {
        id: num(fields[0], "mount id")?,
        parent: num(fields[1], "parent id")?,
        dev: (
            major.parse().map_err(|_| MountInfoError::BadNumber("major"))?,
            minor.parse().map_err(|_| MountInfoError::BadNumber("minor"))?,
        ),
        root: unescape(fields[3]),
        mount_point: unescape(fields[4]),
        options: fields[5].to_string(),
        fs_type: unescape(fields[sep + 1]),
        source: unescape(fields[sep + 2]),
        super_options: fields.get(sep + 3).map(|s| s.to_string()).unwrap_or_default(),
    })
}

/// Every readable line of a `mountinfo` text; unreadable lines are left out.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(|l| parse_line(l).ok()).collect()
}

/// The value of `key=` in a superblock option string, unescaped.
pub fn super_option(options: &str, key: &str) -> Option<String> {
    options.split(',').find_map(|o| {
        let (k, v) = o.split_once('=')?;
        (k == key).then(|| unescape(v))
    })
}

/// The mounts below (not at) `dir`, whose mount point lies inside it.
pub fn mounts_below<'a>(mounts: &'a [MountInfo], dir: &'a str) -> impl Iterator<Item = &'a MountInfo> + 'a {
    let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
    mounts.iter().filter(move |m| m.mount_point.starts_with(&prefix) && m.mount_point != dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PODMAN: &str = "106 60 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/2WDT,upperdir=/x/diff,workdir=/x/work
107 106 0:53 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
108 106 0:54 / /dev rw,nosuid,noexec - tmpfs tmpfs rw,size=65536k,mode=755
110 108 0:56 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
112 106 254:0 /run/containers/storage/overlay-containers/05fc/userdata/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw,discard
113 108 0:49 / /dev/shm rw,nosuid,nodev,noexec,relatime shared:4 master:1 - tmpfs shm rw,size=64000k
65 107 0:58 / /proc/acpi ro,relatime - tmpfs tmpfs ro
";

    #[test]
    fn podman_mounts() {
        let m = parse(PODMAN);
        assert_eq!(m.len(), 7);
        assert_eq!((m[0].id, m[0].parent, m[0].mount_point.as_str(), m[0].fs_type.as_str()), (106, 60, "/", "overlay"));
        assert!(!m[0].read_only());
        assert_eq!(m[4].root, "/run/containers/storage/overlay-containers/05fc/userdata/hosts");
        assert_eq!(m[4].dev, (254, 0));
        assert_eq!((m[5].mount_point.as_str(), m[5].source.as_str()), ("/dev/shm", "shm"));
        assert!(m[6].read_only());
        let below: Vec<&str> = mounts_below(&m, "/dev").map(|m| m.mount_point.as_str()).collect();
        assert_eq!(below, ["/dev/pts", "/dev/shm"]);
        assert_eq!(mounts_below(&m, "/").count(), 6);
    }

    #[test]
    fn escaped_paths() {
        let line = r"200 106 0:50 /a\040b /x\040-\040y\012z\134q\011t rw - overlay ov\040er rw";
        let m = parse_line(line).unwrap();
        assert_eq!(m.root, "/a b");
        assert_eq!(m.mount_point, "/x - y\nz\\q\tt");
        assert_eq!(m.source, "ov er");
        // A backslash that is no escape stays; \777 is not a byte.
        assert_eq!(unescape(r"a\0b\12\777\"), r"a\0b\12\777\");
    }

    #[test]
    fn bad_lines_are_refused() {
        assert_eq!(parse_line(""), Err(MountInfoError::TooFewFields));
        assert_eq!(parse_line("1 2 3:4 / / rw a b c d e"), Err(MountInfoError::NoSeparator));
        assert_eq!(parse_line("x 2 3:4 / / rw - a b c"), Err(MountInfoError::BadNumber("mount id")));
        assert_eq!(parse_line("1 2 3 / / rw - a b c"), Err(MountInfoError::BadNumber("major:minor")));
        assert_eq!(parse_line("1 2 3:4 / / rw a - b"), Err(MountInfoError::TooFewFields));
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![Just(' '), Just('\t'), Just('\n'), Just('\\'), Just('-'), Just('/'), any::<char>()], 0..40)
            .prop_map(|cs| format!("/{}", cs.into_iter().collect::<String>()))
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,400}") {
            let _ = parse(&text);
            let _ = unescape(&text);
        }

        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
        }

        #[test]
        fn escaped_paths_round_trip(root in path_strategy(), point in path_strategy(), id in any::<u64>(), parent in any::<u64>(), ro in any::<bool>()) {
            let opts = if ro { "ro,relatime" } else { "rw,relatime" };
            let line = format!("{id} {parent} 0:50 {} {} {opts} shared:1 - overlay {} rw", escape(&root), escape(&point), escape(&point));
            let m = parse_line(&line).unwrap();
            prop_assert_eq!(m.id, id);
            prop_assert_eq!(m.parent, parent);
            prop_assert_eq!(&m.root, &root);
            prop_assert_eq!(&m.mount_point, &point);
            prop_assert_eq!(&m.source, &point);
            prop_assert_eq!(m.read_only(), ro);
            // A whole file of such lines parses line by line: an escaped
            // newline never splits an entry.
            let two = format!("{line}\n{line}\n");
            prop_assert_eq!(parse(&two).len(), 2);
        }
    }
}
