//! The tenant's DNS record: names and zone ids normalised the way Route53 returns them, and the
//! pure decision of which changes bring the zone to the wanted record. Comparing normalised
//! values is what keeps an unchanged record from being rewritten on every reconcile.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use super::provider::{Record, RecordChange, RecordType};

/// TTL of the records the controller writes.
pub const TTL: i64 = 300;

/// A DNS name as Route53 returns it: lower case, with one trailing dot.
pub fn normalize_name(name: &str) -> String {
    let trimmed = name.trim().trim_end_matches('.');
    format!("{}.", trimmed.to_ascii_lowercase())
}

/// A hosted zone id without the `/hostedzone/` prefix Route53 sometimes returns.
pub fn normalize_zone_id(id: &str) -> String {
    let id = id.trim();
    let id = id.strip_prefix("/hostedzone/").unwrap_or(id);
    id.trim_matches('/').to_owned()
}

/// The record name of a tenant: `<subdomain>.<domain>.`.
pub fn record_name(subdomain: &str, domain: &str) -> String {
    normalize_name(&format!(
        "{}.{}",
        subdomain.trim(),
        domain.trim().trim_end_matches('.')
    ))
}

/// Where the record of a tenant without its own instance points: the shared ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressAddress {
    /// An IPv4 address: an `A` record.
    Ip(Ipv4Addr),
    /// A host name (e.g. a load balancer's): a `CNAME` record.
    Host(String),
}

/// Why a `--ingress-address` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ingress address {value:?}: {reason}")]
pub struct InvalidIngressAddress {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for IngressAddress {
    type Err = InvalidIngressAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let invalid = |reason| InvalidIngressAddress {
            value: s.to_owned(),
            reason,
        };
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => return Ok(IngressAddress::Ip(ip)),
            Ok(IpAddr::V6(_)) => {
                return Err(invalid("IPv6 addresses are not supported (A records only)"))
            }
            Err(_) => {}
        }
        let host = s.trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(invalid("neither an IPv4 address nor a DNS host name"));
        }
        if !host.contains('.') {
            return Err(invalid("a host name needs a domain (e.g. lb.example.com)"));
        }
        Ok(IngressAddress::Host(host.to_ascii_lowercase()))
    }
}

/// The record of `name` pointing at an instance's public IP.
pub fn a_record(name: &str, ip: &str) -> Record {
    Record {
        name: normalize_name(name),
        record_type: RecordType::A,
        ttl: TTL,
        values: vec![ip.trim().to_owned()],
    }
}

/// The record of `name` pointing at the shared ingress.
pub fn ingress_record(name: &str, ingress: &IngressAddress) -> Record {
    match ingress {
        IngressAddress::Ip(ip) => a_record(name, &ip.to_string()),
        IngressAddress::Host(host) => Record {
            name: normalize_name(name),
            record_type: RecordType::Cname,
            ttl: TTL,
            values: vec![normalize_name(host)],
        },
    }
}

fn normalized_values(r: &Record) -> Vec<String> {
    let mut v: Vec<String> = r
        .values
        .iter()
        .map(|v| match r.record_type {
            RecordType::A => v.trim().to_owned(),
            RecordType::Cname => normalize_name(v),
        })
        .collect();
    v.sort();
    v
}

/// Whether two records are the same once names and values are normalised.
pub fn same_record(a: &Record, b: &Record) -> bool {
    normalize_name(&a.name) == normalize_name(&b.name)
        && a.record_type == b.record_type
        && a.ttl == b.ttl
        && normalized_values(a) == normalized_values(b)
}

/// The changes that make the record sets of one name (`existing`) equal `wanted`: nothing
/// when they already match; otherwise the sets of the other type are deleted (a CNAME cannot
/// live beside an A record) and `wanted` is upserted, in one batch.
pub fn changes_for(wanted: &Record, existing: &[Record]) -> Vec<RecordChange> {
    let matching = existing.iter().any(|e| same_record(e, wanted));
    let others: Vec<&Record> = existing
        .iter()
        .filter(|e| e.record_type != wanted.record_type)
        .collect();
    if matching && others.is_empty() {
        return Vec::new();
    }
    let mut changes: Vec<RecordChange> = others
        .into_iter()
        .map(|r| RecordChange::Delete(r.clone()))
        .collect();
    if !matching {
        changes.push(RecordChange::Upsert(wanted.clone()));
    }
    changes
}

/// The changes that delete every A or CNAME record set of a name (those the controller writes).
pub fn deletions(existing: &[Record]) -> Vec<RecordChange> {
    existing.iter().cloned().map(RecordChange::Delete).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_after_normalisation() {
        assert_eq!(normalize_name("Acme.Example.COM"), "acme.example.com.");
        assert_eq!(normalize_name("acme.example.com."), "acme.example.com.");
        assert_eq!(normalize_name(" acme.example.com.. "), "acme.example.com.");
        assert_eq!(record_name("acme", "Example.com."), "acme.example.com.");
    }

    #[test]
    fn zone_ids_lose_the_prefix() {
        assert_eq!(normalize_zone_id("/hostedzone/Z123ABC"), "Z123ABC");
        assert_eq!(normalize_zone_id("Z123ABC"), "Z123ABC");
        assert_eq!(normalize_zone_id(" Z123ABC/ "), "Z123ABC");
    }

    #[test]
    fn ingress_address_parses() {
        assert_eq!(
            "203.0.113.7".parse::<IngressAddress>(),
            Ok(IngressAddress::Ip(Ipv4Addr::new(203, 0, 113, 7)))
        );
        assert_eq!(
            "LB-1.Elb.Amazonaws.com.".parse::<IngressAddress>(),
            Ok(IngressAddress::Host("lb-1.elb.amazonaws.com".into()))
        );
        assert!("::1".parse::<IngressAddress>().is_err());
        assert!("localhost".parse::<IngressAddress>().is_err());
        assert!("bad_host.example.com".parse::<IngressAddress>().is_err());
        assert!("".parse::<IngressAddress>().is_err());
    }

    #[test]
    fn unchanged_record_needs_no_change() {
        let wanted = a_record("acme.example.com", "203.0.113.7");
        // As Route53 returns it: trailing dot, maybe different case.
        let existing = Record {
            name: "ACME.example.com.".into(),
            ..wanted.clone()
        };
        assert!(changes_for(&wanted, &[existing]).is_empty());
        let host = IngressAddress::Host("lb.example.net".into());
        let cname = ingress_record("acme.example.com", &host);
        let returned = Record {
            values: vec!["LB.example.net".into()],
            ..cname.clone()
        };
        assert!(changes_for(&cname, &[returned]).is_empty());
    }

    #[test]
    fn edited_or_missing_record_is_upserted() {
        let wanted = a_record("acme.example.com", "203.0.113.7");
        assert_eq!(
            changes_for(&wanted, &[]),
            vec![RecordChange::Upsert(wanted.clone())]
        );
        let edited = a_record("acme.example.com", "198.51.100.1");
        assert_eq!(
            changes_for(&wanted, &[edited]),
            vec![RecordChange::Upsert(wanted.clone())]
        );
        let ttl = Record {
            ttl: 60,
            ..wanted.clone()
        };
        assert_eq!(changes_for(&wanted, &[ttl]).len(), 1);
    }

    #[test]
    fn switching_type_deletes_the_other_type() {
        let cname = ingress_record(
            "acme.example.com",
            &IngressAddress::Host("lb.example.net".into()),
        );
        let a = a_record("acme.example.com", "203.0.113.7");
        assert_eq!(
            changes_for(&a, std::slice::from_ref(&cname)),
            vec![RecordChange::Delete(cname), RecordChange::Upsert(a)]
        );
    }
}
