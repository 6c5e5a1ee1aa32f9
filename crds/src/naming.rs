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
    fn odd_characters_become_dashes() {
        assert_eq!(dns_label("--Foo_Bar.baz--"), "foo-bar-baz");
        assert!(is_dns_label(&dns_label("___")));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
