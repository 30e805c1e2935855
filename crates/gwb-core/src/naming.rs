//! Names of written-back groups: anchor, CN and sAMAccountName (DESIGN.md §3).

/// AD limit on the `cn` RDN value (ub-common-name), in UTF-16 code units: AD stores
/// Unicode strings as UTF-16 and counts its "characters" so (an emoji counts two).
pub const CN_MAX_CHARS: usize = 64;
/// `sAMAccountName` kept within the pre-Windows 2000 limit so every client can use it,
/// in UTF-16 code units as AD counts.
pub const SAM_MAX_CHARS: usize = 20;
/// Display-name part of the `<displayName>_<last 12>` template (Microsoft's rule), in
/// UTF-16 code units, so the CN stays within 64.
const DISPLAY_NAME_CHARS: usize = 51;

/// Length as AD counts it: UTF-16 code units.
pub fn ad_length(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Which CN Microsoft's writeback would use; we offer both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameTemplate {
    /// `Group_<objectId>` (Connect Sync's default).
    #[default]
    ObjectId,
    /// `<displayName, at most 51 chars>_<last 12 hex chars of objectId>`.
    DisplayName,
}

/// The anchor written to `adminDescription` / `msDS-ExternalDirectoryObjectId`.
pub fn anchor(object_id: &str) -> String {
    format!("Group_{}", object_id.to_ascii_lowercase())
}

/// Inverse of [`anchor`].
pub fn object_id_from_anchor(anchor: &str) -> Option<&str> {
    anchor.strip_prefix("Group_")
}

fn last_12(object_id: &str) -> String {
    let hex: String = object_id.chars().filter(char::is_ascii_hexdigit).collect();
    let start = hex.len().saturating_sub(12);
    hex[start..].to_ascii_lowercase()
}

/// The CN (unescaped) for a group. Whitespace is trimmed as Microsoft's expression
/// does, control characters are dropped (they have no business in a name), and the
/// result always fits AD's 64-character limit.
pub fn cn(template: NameTemplate, display_name: &str, object_id: &str) -> String {
    match template {
        NameTemplate::ObjectId => anchor(object_id),
        NameTemplate::DisplayName => {
            let cleaned: String = display_name.chars().filter(|c| !c.is_control()).collect();
            let base = truncate(cleaned.trim(), DISPLAY_NAME_CHARS);
            let base = base.trim_end();
            if base.is_empty() { anchor(object_id) } else { format!("{base}_{}", last_12(object_id)) }
        }
    }
}

/// Characters AD refuses in sAMAccountName, plus control characters.
fn sam_allowed(c: char) -> bool {
    !(c.is_control() || "\"/\\[]:;|=,+*?<>@".contains(c))
}

/// Deterministic, readable sAMAccountName candidates, best first: the cleaned display
/// name, then the name with growing slices of the objectId, then the objectId form.
/// The writer takes the first one no other object uses.
pub fn sam_account_name_candidates(display_name: &str, object_id: &str) -> Vec<String> {
    let cleaned: String = display_name.chars().filter(|c| sam_allowed(*c)).collect();
    let cleaned = sam_ends(&cleaned);
    let id_hex = last_12(object_id);
    let mut candidates = Vec::new();
    if !cleaned.is_empty() {
        // Cut first, then clean the ends again: a cut can leave a trailing space or
        // period ("Conf Hostile Member ", "… 1234."), which AD refuses or shows badly.
        let whole = truncate(cleaned, SAM_MAX_CHARS);
        let whole = sam_ends(&whole);
        if !whole.is_empty() {
            candidates.push(whole.to_string());
        }
        for suffix_len in [4, 8, 12] {
            let suffix = &id_hex[id_hex.len().saturating_sub(suffix_len)..];
            let room = SAM_MAX_CHARS - suffix.len() - 1;
            let base = sam_ends(&truncate(cleaned, room)).to_string();
            if !base.is_empty() {
                candidates.push(format!("{base}_{suffix}"));
            }
        }
    }
    // Always unique by construction: 7 + 12 = 19 characters.
    candidates.push(format!("Group_{id_hex}"));
    candidates.dedup();
    candidates
}

/// Without leading and trailing spaces, and without trailing periods (AD refuses a
/// sAMAccountName that ends in one).
fn sam_ends(text: &str) -> &str {
    text.trim().trim_end_matches(|c: char| c == '.' || c.is_whitespace())
}

/// The longest prefix of whole characters within `max_units` UTF-16 code units.
fn truncate(text: &str, max_units: usize) -> String {
    let mut units = 0;
    text.chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= max_units
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3A5C3221-0F1E-4B7D-9C8A-E9305786A271";

    #[test]
    fn templates() {
        assert_eq!(cn(NameTemplate::ObjectId, "x", ID), "Group_3a5c3221-0f1e-4b7d-9c8a-e9305786a271");
        assert_eq!(cn(NameTemplate::DisplayName, " Administrators ", ID), "Administrators_e9305786a271");
        let long = "a".repeat(80);
        let name = cn(NameTemplate::DisplayName, &long, ID);
        assert_eq!(name.chars().count(), 51 + 13);
        assert!(name.chars().count() <= CN_MAX_CHARS);
        assert_eq!(cn(NameTemplate::DisplayName, "  \n ", ID), anchor(ID));
        assert_eq!(cn(NameTemplate::DisplayName, "Équipe 🚀", ID), "Équipe 🚀_e9305786a271");
    }

    #[test]
    fn sam_candidates_are_clean_bounded_and_end_unique() {
        let c = sam_account_name_candidates("Sales, EMEA: \"Team\"", ID);
        assert_eq!(c[0], "Sales EMEA Team");
        assert!(c.iter().all(|s| s.chars().count() <= SAM_MAX_CHARS));
        assert!(c.iter().all(|s| s.chars().all(sam_allowed)));
        assert_eq!(c.last().map(String::as_str), Some("Group_e9305786a271"));
        assert_eq!(c[1], "Sales EMEA Team_a271");
        let only_bad = sam_account_name_candidates("@@@", ID);
        assert_eq!(only_bad, vec!["Group_e9305786a271".to_string()]);
        assert_eq!(sam_account_name_candidates("x", ID), sam_account_name_candidates("x", ID));
    }

    #[test]
    fn a_cut_never_leaves_a_trailing_space_or_period() {
        // 20 characters would end in a space, or in a period.
        for name in ["Conf Hostile Member X", "Conf Hostile 1234.tail", "Abcdefghijklmnopqr. .x"] {
            for candidate in sam_account_name_candidates(name, ID) {
                assert!(!candidate.ends_with(' ') && !candidate.ends_with('.'), "{name:?}: {candidate:?}");
                assert!(ad_length(&candidate) <= SAM_MAX_CHARS, "{candidate:?}");
            }
        }
        assert_eq!(sam_account_name_candidates("Conf Hostile Member X", ID)[0], "Conf Hostile Member");
        assert_eq!(sam_account_name_candidates("Conf Hostile 1234.tail", ID)[1], "Conf Hostile 12_a271");
    }

    #[test]
    fn lengths_are_counted_in_utf16_units_as_ad_does() {
        let emoji = "🚀".repeat(40);
        let name = cn(NameTemplate::DisplayName, &emoji, ID);
        assert!(ad_length(&name) <= CN_MAX_CHARS, "{} units", ad_length(&name));
        assert_eq!(ad_length(&name), 50 + 13, "25 rockets of two units each, then _ and 12");
        for candidate in sam_account_name_candidates(&emoji, ID) {
            assert!(ad_length(&candidate) <= SAM_MAX_CHARS, "{candidate:?}");
        }
    }
}

#[cfg(test)]
mod hostile_names {
    use super::*;
    use crate::escape::{dn_value, filter_value};

    const ID: &str = "0d6a8e1c-1111-2222-3333-444455556666";

    /// Display names an attacker (or an unlucky user) can give a cloud group.
    const HOSTILE: &[&str] = &[
        "Domain Admins",
        "Enterprise Admins",
        "Administrators",
        "krbtgt",
        ",+\"\\<>;=",
        "#leading hash",
        " leading and trailing spaces ",
        "trailing.",
        "NUL\0inside",
        "tab\tand\nnewline\r",
        "\u{202e}right-to-left override",
        "שלום עולם",
        "emoji 🚀🔥 group",
        "e\u{301}\u{302}\u{303} combining",
        "*)(objectClass=*",
        "admin)(|(cn=*",
        "\\2a escaped star",
        "CN=Evil,OU=x,DC=lab",
        "",
        "   ",
        "@@@@",
        "very long ",
    ];

    #[test]
    fn every_hostile_name_yields_bounded_escaped_deterministic_names() {
        let long = "x".repeat(300);
        let names: Vec<&str> = HOSTILE.iter().copied().chain(std::iter::once(long.as_str())).collect();
        for name in names {
            for template in [NameTemplate::ObjectId, NameTemplate::DisplayName] {
                let cn = cn(template, name, ID);
                assert!(cn.chars().count() <= CN_MAX_CHARS, "{name:?}: {cn:?}");
                assert!(!cn.chars().any(char::is_control), "{name:?}: {cn:?}");
                assert!(!cn.trim().is_empty(), "{name:?}");
                // The CN always ends with (part of) the objectId: it can never equal
                // a well-known name such as "Domain Admins".
                assert!(cn.ends_with(&ID[ID.len() - 12..]), "{name:?}: {cn:?}");
                let escaped = dn_value(&cn);
                assert!(!escaped.starts_with('#') && !escaped.starts_with(' '), "{escaped:?}");
                for special in [",", "+", "\"", "<", ">", ";", "="] {
                    assert_eq!(
                        escaped.matches(special).count(),
                        escaped.matches(&format!("\\{special}")).count(),
                        "{escaped:?}"
                    );
                }
                assert_eq!(cn, super::cn(template, name, ID), "not deterministic");
            }
            let sams = sam_account_name_candidates(name, ID);
            assert!(!sams.is_empty());
            for sam in &sams {
                assert!(sam.chars().count() <= SAM_MAX_CHARS, "{sam:?}");
                assert!(sam.chars().all(sam_allowed), "{sam:?}");
                assert!(!sam.ends_with('.') && sam.trim() == sam, "{sam:?}");
            }
            let filter = filter_value(name);
            assert!(
                !filter.contains('*') && !filter.contains('(') && !filter.contains(')') && !filter.contains('\0'),
                "{filter:?}"
            );
        }
    }
}
