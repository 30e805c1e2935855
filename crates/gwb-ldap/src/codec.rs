//! Pure decoding and DN logic: binary GUID/SID forms, extended-DN member values,
//! ranged attribute names, and DN comparison. No I/O, so all of it is unit-tested.

use std::fmt::Write as _;

/// BER value of the extended-DN control asking for the string form:
/// `SEQUENCE { INTEGER 1 }`. Flag 0 would return hex-encoded binary GUID/SID.
pub(crate) const EXTENDED_DN_STRING_FORM: [u8; 5] = [0x30, 0x03, 0x02, 0x01, 0x01];

/// AD's `cn` has `rangeUpper: 64` (characters).
pub(crate) const CN_MAX_CHARS: usize = 64;

/// Formats a binary `objectGUID` as AD shows it: the first three fields are stored
/// little-endian, the last eight bytes as they are.
pub(crate) fn guid_from_bytes(bytes: &[u8]) -> Option<String> {
    let b: &[u8; 16] = bytes.try_into().ok()?;
    let mut out = String::with_capacity(36);
    for i in [3, 2, 1, 0] {
        push_hex(&mut out, b[i]);
    }
    out.push('-');
    for i in [5, 4] {
        push_hex(&mut out, b[i]);
    }
    out.push('-');
    for i in [7, 6] {
        push_hex(&mut out, b[i]);
    }
    out.push('-');
    for byte in &b[8..10] {
        push_hex(&mut out, *byte);
    }
    out.push('-');
    for byte in &b[10..16] {
        push_hex(&mut out, *byte);
    }
    Some(out)
}

fn push_hex(out: &mut String, byte: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{byte:02x}");
}

/// Formats a binary `objectSid` as `S-1-5-21-…` (MS-DTYP 2.4.2.2): revision, count,
/// 48-bit big-endian authority, then little-endian 32-bit sub-authorities.
pub(crate) fn sid_from_bytes(bytes: &[u8]) -> Option<String> {
    let (&revision, rest) = bytes.split_first()?;
    let (&count, rest) = rest.split_first()?;
    let authority = rest.get(..6)?;
    let subs = rest.get(6..)?;
    if subs.len() != usize::from(count) * 4 {
        return None;
    }
    let authority = authority.iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let mut out = format!("S-{revision}-{authority}");
    for chunk in subs.chunks_exact(4) {
        let sub = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let _ = write!(out, "-{sub}");
    }
    Some(out)
}

/// Canonical text forms so SIDs and GUIDs from different sources compare equal.
pub(crate) fn canonical_sid(sid: &str) -> String {
    sid.trim().to_ascii_uppercase()
}

pub(crate) fn canonical_guid(guid: &str) -> String {
    guid.trim().trim_start_matches('{').trim_end_matches('}').to_ascii_lowercase()
}

/// A value in extended-DN string form: `<GUID=…>;<SID=…>;CN=…` (SID absent for
/// objects without one, e.g. contacts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtendedDn {
    pub guid: String,
    pub sid: Option<String>,
    pub dn: String,
}

pub(crate) fn parse_extended_dn(value: &str) -> Option<ExtendedDn> {
    let mut guid = None;
    let mut sid = None;
    let mut rest = value;
    // A plain DN starts with an attribute type, never '<', so the prefix is unambiguous.
    while let Some(tail) = rest.strip_prefix('<') {
        let end = tail.find('>')?;
        let (component, after) = (&tail[..end], &tail[end + 1..]);
        if let Some(g) = strip_prefix_ci(component, "GUID=") {
            guid = Some(canonical_guid(g));
        } else if let Some(s) = strip_prefix_ci(component, "SID=") {
            sid = Some(canonical_sid(s));
        }
        rest = match after.strip_prefix(';') {
            Some(next) => next,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(ExtendedDn { guid: guid?, sid, dn: rest.to_string() })
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Parses a returned attribute description `member;range=0-1499` (or `…;range=1500-*`
/// for the last chunk) into `(low, Some(high))` / `(low, None)`.
pub(crate) fn parse_range(description: &str, attribute: &str) -> Option<(usize, Option<usize>)> {
    let (name, options) = description.split_once(';')?;
    if !name.eq_ignore_ascii_case(attribute) {
        return None;
    }
    let range = options.split(';').find_map(|option| strip_prefix_ci(option, "range="))?;
    let (low, high) = range.split_once('-')?;
    let low = low.parse().ok()?;
    let high = match high {
        "*" => None,
        h => Some(h.parse().ok()?),
    };
    Some((low, high))
}

/// One RDN as (lower-case type, unescaped lower-case value), for comparisons only.
type Rdn = (String, String);

/// Splits a DN into comparable RDNs: types and values lower-cased (AD compares DNs
/// case-insensitively), escapes decoded, insignificant spaces dropped. `None` when the
/// text is not a DN.
pub(crate) fn parse_dn(dn: &str) -> Option<Vec<Rdn>> {
    let dn = dn.trim();
    if dn.is_empty() {
        return Some(Vec::new());
    }
    let mut rdns = Vec::new();
    for component in split_unescaped(dn, ',') {
        let (kind, value) = split_once_unescaped(component, '=')?;
        let kind = kind.trim();
        if kind.is_empty() {
            return None;
        }
        rdns.push((kind.to_lowercase(), unescape_value(value)?.to_lowercase()));
    }
    Some(rdns)
}

fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, ch) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == separator {
            parts.push(&text[start..index]);
            start = index + ch.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_once_unescaped(text: &str, separator: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (index, ch) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == separator {
            return Some((&text[..index], &text[index + ch.len_utf8()..]));
        }
    }
    None
}

/// Decodes RFC 4514 escapes (`\,` and `\2C` alike) and drops unescaped leading and
/// trailing spaces.
fn unescape_value(value: &str) -> Option<String> {
    let value = value.trim_start_matches(' ');
    let mut bytes = Vec::with_capacity(value.len());
    // Index in `bytes` after the last escaped byte: trailing spaces before it are data.
    let mut protected = 0;
    let mut chars = value.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let first = chars.next()?;
        match (first.to_digit(16), chars.peek().and_then(|c| c.to_digit(16))) {
            (Some(high), Some(low)) => {
                chars.next();
                bytes.push(u8::try_from(high * 16 + low).ok()?);
            }
            _ => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(first.encode_utf8(&mut buf).as_bytes());
            }
        }
        protected = bytes.len();
    }
    while bytes.len() > protected && bytes.last() == Some(&b' ') {
        bytes.pop();
    }
    String::from_utf8(bytes).ok()
}

pub(crate) fn dn_eq(a: &str, b: &str) -> bool {
    match (parse_dn(a), parse_dn(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Whether `dn` lies strictly below `ancestor`.
pub(crate) fn is_below(dn: &str, ancestor: &str) -> bool {
    match (parse_dn(dn), parse_dn(ancestor)) {
        (Some(dn), Some(ancestor)) => dn.len() > ancestor.len() && dn.ends_with(&ancestor),
        _ => false,
    }
}

/// Whether `dn` is `ancestor` itself or lies below it.
pub(crate) fn is_at_or_below(dn: &str, ancestor: &str) -> bool {
    dn_eq(dn, ancestor) || is_below(dn, ancestor)
}

/// The DN of the entry's parent (everything after the first unescaped comma).
pub(crate) fn parent_dn(dn: &str) -> Option<&str> {
    let mut escaped = false;
    for (index, ch) in dn.char_indices() {
        if escaped {
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == ',' {
            return Some(dn[index + 1..].trim_start());
        }
    }
    None
}

/// The deterministic name used when the wanted CN belongs to a foreign object:
/// `<cn truncated>_<objectId>`, within AD's 64-character CN limit.
pub(crate) fn fallback_cn(cn: &str, object_id: &str) -> String {
    let suffix = format!("_{object_id}");
    let room = CN_MAX_CHARS.saturating_sub(suffix.chars().count());
    let head: String = cn.chars().take(room).collect();
    format!("{}{suffix}", head.trim_end())
}

/// Well-known and privileged principals the writer must never modify: builtin
/// (`S-1-5-32-…`), anything outside a domain's `S-1-5-21-…` space, and domain RIDs
/// below 1000 (Administrator 500, Domain Admins 512, Enterprise Admins 519, …).
pub(crate) fn is_privileged_sid(sid: &str) -> bool {
    let sid = canonical_sid(sid);
    let Some(rest) = sid.strip_prefix("S-1-5-21-") else {
        return true;
    };
    let rid = rest.rsplit('-').next().and_then(|r| r.parse::<u64>().ok());
    let parts = rest.split('-').count();
    // A domain account SID has three domain sub-authorities and the RID.
    parts < 4 || rid.is_none_or(|rid| rid < 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_mixed_endianness() {
        // objectGUID:: VF19Bx1Fqk6N8UpSZBQlfg== as read from Samba.
        let bytes = [0x54, 0x5d, 0x7d, 0x07, 0x1d, 0x45, 0xaa, 0x4e, 0x8d, 0xf1, 0x4a, 0x52, 0x64, 0x14, 0x25, 0x7e];
        assert_eq!(guid_from_bytes(&bytes).as_deref(), Some("077d5d54-451d-4eaa-8df1-4a526414257e"));
        assert_eq!(guid_from_bytes(&bytes[..15]), None);
    }

    #[test]
    fn sid_decodes() {
        // objectSid:: AQUAAAAAAAUVAAAA52wOQQqG3zo5chvrTwQAAA==
        let bytes = [
            1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 0xe7, 0x6c, 0x0e, 0x41, 0x0a, 0x86, 0xdf, 0x3a, 0x39, 0x72, 0x1b,
            0xeb, 0x4f, 0x04, 0, 0,
        ];
        assert_eq!(sid_from_bytes(&bytes).as_deref(), Some("S-1-5-21-1091464423-987727370-3944444473-1103"));
        // Builtin Administrators: S-1-5-32-544.
        assert_eq!(
            sid_from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 0x02, 0, 0]).as_deref(),
            Some("S-1-5-32-544")
        );
        assert_eq!(sid_from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0]), None);
        assert_eq!(sid_from_bytes(&[]), None);
    }

    #[test]
    fn extended_dn_forms() {
        let full = parse_extended_dn(
            "<GUID=D703952B-e89e-4914-840f-9c46b1318c16>;<SID=S-1-5-21-1-2-3-1234>;CN=S-1-5-21-1-2-3-1234,CN=ForeignSecurityPrincipals,DC=lab,DC=example",
        );
        assert_eq!(
            full,
            Some(ExtendedDn {
                guid: "d703952b-e89e-4914-840f-9c46b1318c16".into(),
                sid: Some("S-1-5-21-1-2-3-1234".into()),
                dn: "CN=S-1-5-21-1-2-3-1234,CN=ForeignSecurityPrincipals,DC=lab,DC=example".into(),
            })
        );
        let no_sid = parse_extended_dn("<GUID=abc>;CN=x\\;y,OU=o");
        assert_eq!(no_sid.map(|e| (e.sid, e.dn)), Some((None, "CN=x\\;y,OU=o".into())));
        assert_eq!(parse_extended_dn("CN=plain,DC=x"), None);
        assert_eq!(parse_extended_dn("<GUID=abc"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("member;range=0-1499", "member"), Some((0, Some(1499))));
        assert_eq!(parse_range("Member;Range=1500-*", "member"), Some((1500, None)));
        assert_eq!(parse_range("member", "member"), None);
        assert_eq!(parse_range("memberOf;range=0-*", "member"), None);
        assert_eq!(parse_range("member;range=x-*", "member"), None);
    }

    #[test]
    fn dn_comparison_ignores_case_spacing_and_escape_style() {
        assert!(dn_eq("CN=A\\,B,OU=Groups,DC=lab,DC=example", "cn=a\\2cb, ou=groups,dc=LAB,dc=example"));
        assert!(dn_eq("CN=x\\ ,DC=y", "cn=x\\20,dc=y"));
        assert!(!dn_eq("CN=x\\ ,DC=y", "cn=x,dc=y"));
        assert!(!dn_eq("CN=a,DC=x", "CN=b,DC=x"));
        assert!(!dn_eq("garbage", "garbage"));
    }

    #[test]
    fn containment() {
        let ou = "OU=Managed,DC=lab,DC=example";
        assert!(is_below("CN=g,OU=Managed,DC=lab,DC=example", ou));
        assert!(is_below("CN=g,OU=Sub,ou=managed,dc=lab,dc=example", ou));
        assert!(!is_below(ou, ou));
        assert!(is_at_or_below(ou, ou));
        assert!(!is_below("CN=g,OU=NotManaged,DC=lab,DC=example", ou));
        // A suffix of the text is not a parent: "OU=xManaged" is not below "OU=Managed".
        assert!(!is_below("CN=g,OU=xManaged,DC=lab,DC=example", ou));
        // An escaped comma does not separate RDNs.
        assert!(!is_below("CN=g\\,OU=Managed,DC=lab,DC=example", ou));
    }

    #[test]
    fn parent_of_dn_respects_escapes() {
        assert_eq!(parent_dn("CN=a\\,b,OU=x,DC=y"), Some("OU=x,DC=y"));
        assert_eq!(parent_dn("DC=y"), None);
    }

    #[test]
    fn fallback_names_fit_cn_limit() {
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(fallback_cn("Sales", id), format!("Sales_{id}"));
        let long = "x".repeat(80);
        let name = fallback_cn(&long, id);
        assert_eq!(name.chars().count(), CN_MAX_CHARS);
        assert!(name.ends_with(id));
        // Truncation that ends on a space does not leave "name _id".
        let spaced = format!("{} tail", "y".repeat(26));
        assert_eq!(fallback_cn(&spaced, id), format!("{}_{id}", "y".repeat(26)));
        let wide = "é".repeat(70);
        assert_eq!(fallback_cn(&wide, id).chars().count(), CN_MAX_CHARS);
    }

    #[test]
    fn privileged_sids() {
        assert!(is_privileged_sid("S-1-5-32-544"));
        assert!(is_privileged_sid("S-1-5-21-1-2-3-512"));
        assert!(is_privileged_sid("S-1-5-21-1-2-3-999"));
        assert!(is_privileged_sid("S-1-1-0"));
        assert!(is_privileged_sid("S-1-5-21-1-2"));
        assert!(!is_privileged_sid("S-1-5-21-1-2-3-1000"));
        assert!(!is_privileged_sid("s-1-5-21-1091464423-987727370-3944444473-1103"));
    }
}
