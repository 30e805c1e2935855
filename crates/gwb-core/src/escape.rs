//! Escaping of values placed into LDAP distinguished names (RFC 4514) and search
//! filters (RFC 4515). Every cloud-controlled string that reaches the directory goes
//! through one of these; nothing builds a DN or filter by plain concatenation.

/// Escapes one attribute value for use inside an RDN (RFC 4514 §2.4).
///
/// Escapes `,+"\<>;=` anywhere, `#` and space at the start, space at the end, and
/// NUL / control characters as `\XX` hex pairs so the DN stays printable and
/// unambiguous. Non-ASCII text (right-to-left, emoji, combining marks) is kept as is:
/// AD stores names in UTF-8.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (index, ch) in value.chars().enumerate() {
        match ch {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(ch);
            }
            '#' if index == 0 => out.push_str("\\#"),
            ' ' if index == 0 || index == last => out.push_str("\\ "),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes one assertion value for use inside a search filter (RFC 4515 §3).
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for ch in value.chars() {
        match ch {
            '*' | '(' | ')' | '\\' | '\0' => out.push_str(&format!("\\{:02x}", ch as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Builds `CN=<escaped cn>,<parent>`; `parent` must already be a valid DN.
pub fn child_dn(cn: &str, parent_dn: &str) -> String {
    format!("CN={},{}", dn_value(cn), parent_dn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_specials_are_escaped() {
        assert_eq!(dn_value(r#"a,b+c"d\e<f>g;h=i"#), r#"a\,b\+c\"d\\e\<f\>g\;h\=i"#);
    }

    #[test]
    fn dn_leading_hash_and_edge_spaces() {
        assert_eq!(dn_value("#x"), "\\#x");
        assert_eq!(dn_value("x#"), "x#");
        assert_eq!(dn_value(" x "), "\\ x\\ ");
        assert_eq!(dn_value(" "), "\\ ");
        assert_eq!(dn_value("a b"), "a b");
    }

    #[test]
    fn dn_control_characters_become_hex() {
        assert_eq!(dn_value("a\0b\nc"), "a\\00b\\0Ac");
    }

    #[test]
    fn dn_unicode_kept() {
        assert_eq!(dn_value("Équipe 🚀 שלום"), "Équipe 🚀 שלום");
    }

    #[test]
    fn filter_metacharacters() {
        assert_eq!(filter_value("a*b(c)d\\e\0"), "a\\2ab\\28c\\29d\\5ce\\00");
        assert_eq!(filter_value("Équipe*"), "Équipe\\2a");
    }

    #[test]
    fn child_dn_composes() {
        assert_eq!(child_dn("A,B", "OU=x,DC=lab"), "CN=A\\,B,OU=x,DC=lab");
    }
}
