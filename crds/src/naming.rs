//! Naming rules: the name of a Tenant made from a Stripe customer and the name of its namespace.
//! Both must be DNS-1123 labels of at most 63 characters; a longer name is cut and given a
//! stable hash suffix, so the same input always gives the same name.

use sha2::{Digest, Sha256};

/// Longest DNS-1123 label.
pub const MAX_NAME_LEN: usize = 63;

/// Prefix of every tenant namespace.
pub const NAMESPACE_PREFIX: &str = "tenant-";

/// Length of the hash suffix (hex characters) given to names that had to be cut.
const HASH_LEN: usize = 8;

/// Name of the Tenant of a Stripe customer on a platform:
/// `<platform>-<customer id without "cus_", lowercased>`.
pub fn tenant_name(platform: &str, stripe_customer_id: &str) -> String {
    let id = stripe_customer_id
        .strip_prefix("cus_")
        .unwrap_or(stripe_customer_id);
    dns_label(&format!("{platform}-{id}"))
}

/// Namespace of a tenant: `tenant-<tenant name>`.
pub fn namespace_name(tenant: &str) -> String {
    dns_label(&format!("{NAMESPACE_PREFIX}{tenant}"))
}

/// `raw` as a DNS-1123 label: lowercased, every other character replaced by '-', no leading or
/// trailing '-', and at most 63 characters, with a hash of `raw` as suffix when it was cut.
pub fn dns_label(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if !cleaned.is_empty() && cleaned.len() <= MAX_NAME_LEN {
        return cleaned.to_owned();
    }
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    let head = cleaned[..cleaned.len().min(keep)].trim_end_matches('-');
    if head.is_empty() {
        hash[..HASH_LEN].to_owned()
    } else {
        format!("{head}-{}", &hash[..HASH_LEN])
    }
}

/// `raw` as a label value: kept as it is when it is one (at most 63 characters of
/// alphanumerics, '-', '_' and '.', starting and ending alphanumeric), else cut to fit with a
/// stable hash of `raw` as suffix, as [`dns_label`] does for names. Label values made from
/// object names (a TenantBackup's can be 253 characters) go through this.
pub fn label_value(raw: &str) -> String {
    if is_label_value(raw) {
        return raw.to_owned();
    }
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let head = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        hash[..HASH_LEN].to_owned()
    } else {
        format!("{head}-{}", &hash[..HASH_LEN])
    }
}

/// Whether `value` is a valid label value (the empty value is, too).
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= MAX_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `base` followed by `-suffix` as a DNS-1123 label: when the whole does not fit, `base` is cut
/// and hashed so that `suffix` always stays readable at the end (`…-a1b2c3d4-dump`). Names
/// derived from a long name (a backup's Job, a snapshot) use this.
pub fn suffixed_name(base: &str, suffix: &str) -> String {
    let whole = format!("{base}-{suffix}");
    let cleaned = dns_label(&whole);
    if cleaned.len() < MAX_NAME_LEN || cleaned == whole {
        return cleaned;
    }
    let room = MAX_NAME_LEN.saturating_sub(suffix.len() + 1);
    let hash = hex::encode(Sha256::digest(whole.as_bytes()));
    let head_len = room.saturating_sub(HASH_LEN + 1);
    let head = dns_label(base);
    let head = head[..head.len().min(head_len)].trim_end_matches('-');
    let name = if head.is_empty() {
        format!("{}-{suffix}", &hash[..HASH_LEN])
    } else {
        format!("{head}-{}-{suffix}", &hash[..HASH_LEN])
    };
    dns_label(&name)
}

/// Whether `name` is a DNS-1123 label.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_name_strips_prefix_and_lowercases() {
        assert_eq!(
            tenant_name("leadsite-io", "cus_NffrFeUfNV2Hib"),
            "leadsite-io-nffrfeufnv2hib"
        );
        assert_eq!(
            namespace_name("leadsite-io-nffrfeufnv2hib"),
            "tenant-leadsite-io-nffrfeufnv2hib"
        );
    }

    #[test]
    fn long_names_are_cut_with_a_stable_suffix() {
        let platform = "a-platform-with-a-really-quite-long-name-for-testing";
        let a = tenant_name(platform, "cus_ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        let b = tenant_name(platform, "cus_ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        let c = tenant_name(platform, "cus_ABCDEFGHIJKLMNOPQRSTUVWXYY");
        assert_eq!(a, b);
        assert_ne!(
            a, c,
            "names that differ only after the cut must still differ"
        );
        assert_eq!(a.len(), MAX_NAME_LEN);
        assert!(is_dns_label(&a), "{a}");
        let ns = namespace_name(&a);
        assert!(ns.len() <= MAX_NAME_LEN && is_dns_label(&ns), "{ns}");
        assert_ne!(ns, namespace_name(&c));
    }

    #[test]
    fn label_values_fit_and_stay_distinct() {
        assert_eq!(label_value("acme-20260101-030000"), "acme-20260101-030000");
        let long = format!("{}-20260101-030000", "t".repeat(63));
        let v = label_value(&long);
        assert!(v.len() <= MAX_NAME_LEN && is_label_value(&v), "{v}");
        assert_eq!(v, label_value(&long));
        assert_ne!(
            v,
            label_value(&format!("{}-20260101-030001", "t".repeat(63)))
        );
        assert!(is_label_value(&label_value("-._")));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(!is_label_value("a/b"));
    }

    #[test]
    fn suffixed_names_keep_the_suffix_and_fit() {
        assert_eq!(suffixed_name("acme-1", "dump"), "acme-1-dump");
        let long = format!("{}-pre-delete", "t".repeat(63));
        let a = suffixed_name(&long, "dump");
        assert!(a.len() <= MAX_NAME_LEN && is_dns_label(&a), "{a}");
        assert!(a.ends_with("-dump"), "{a}");
        assert_eq!(a, suffixed_name(&long, "dump"));
        assert_ne!(
            a,
            suffixed_name(&format!("{}-pre-delete", "u".repeat(63)), "dump")
        );
        assert_ne!(
            a,
            suffixed_name(&format!("{}-pre-deletf", "t".repeat(63)), "dump")
        );
    }

    #[test]
    fn odd_characters_become_dashes() {
        assert_eq!(dns_label("--Foo_Bar.baz--"), "foo-bar-baz");
        assert!(is_dns_label(&dns_label("___")));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
