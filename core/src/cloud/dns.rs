//! The tenant's DNS record: names and zone ids normalised the way Route53 returns them, and the
//! pure decision of which changes bring the zone to the wanted record. Comparing normalised
//! values is what keeps an unchanged record from being rewritten on every reconcile.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use super::instance::InstanceResult;
use super::model::{Record, RecordChange, RecordType};

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

/// Prefix of the ownership record beside each tenant record: `_stackplane-owner.<record>`.
/// A TXT record cannot sit beside a CNAME of the same name, hence a name of its own (as
/// external-dns's TXT registry does).
pub const OWNER_PREFIX: &str = "_stackplane-owner.";

/// The name of the ownership record of `record` (normalised).
pub fn owner_name(record: &str) -> String {
    normalize_name(&format!("{OWNER_PREFIX}{}", normalize_name(record)))
}

/// The tenant record an ownership record stands beside, `None` for any other name.
pub fn owned_name(owner_record: &str) -> Option<String> {
    normalize_name(owner_record)
        .strip_prefix(OWNER_PREFIX)
        .map(normalize_name)
}

/// Who holds a tenant record, as its ownership TXT record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub tenant: String,
    pub uid: String,
    /// Left behind by a `deletionPolicy: Retain` tenant: never collected.
    pub retained: bool,
    /// Unix seconds when the record was first claimed (the garbage collector's grace counts
    /// from here; Route53 keeps no creation time).
    pub created: i64,
}

impl Ownership {
    /// The TXT value (quoted, as Route53 wants it).
    pub fn value(&self) -> String {
        format!(
            "\"heritage=stackplane,tenant={},uid={},retained={},created={}\"",
            self.tenant, self.uid, self.retained, self.created
        )
    }

    /// The ownership a TXT value records, `None` for a value stackplane did not write.
    pub fn parse(value: &str) -> Option<Self> {
        let inner = value.trim().trim_matches('"');
        let mut fields = std::collections::HashMap::new();
        for pair in inner.split(',') {
            let (k, v) = pair.split_once('=')?;
            fields.insert(k.trim(), v.trim());
        }
        if fields.get("heritage") != Some(&"stackplane") {
            return None;
        }
        Some(Ownership {
            tenant: (*fields.get("tenant")?).to_owned(),
            uid: (*fields.get("uid")?).to_owned(),
            retained: fields.get("retained") == Some(&"true"),
            created: fields.get("created")?.parse().ok()?,
        })
    }

    /// The ownership recorded by the first stackplane value among `records` (TXT sets).
    pub fn of(records: &[Record]) -> Option<Self> {
        records
            .iter()
            .filter(|r| r.record_type == RecordType::Txt)
            .flat_map(|r| r.values.iter())
            .find_map(|v| Ownership::parse(v))
    }
}

/// The ownership TXT record of `record`.
pub fn owner_record(record: &str, owner: &Ownership) -> Record {
    Record {
        name: owner_name(record),
        record_type: RecordType::Txt,
        ttl: TTL,
        values: vec![owner.value()],
    }
}

/// Whether a tenant may write its record, from the ownership record and what exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds the name: claim it (the ownership record is created, not upserted, so of
    /// two tenants racing for it one batch fails).
    Free,
    /// This tenant holds it; `created` is kept when the ownership record is rewritten.
    Ours { created: i64 },
    /// Someone else does (another tenant, or a record stackplane did not write).
    Taken { owner: String },
}

/// Who may write the record named by `existing` (its A/CNAME sets) and `owner` (the ownership
/// record's sets), for the tenant `uid`. `recorded`: the tenant's status already names this
/// record (written by a controller from before ownership records: adopted, not refused).
pub fn claim(uid: &str, owner: Option<&Ownership>, existing: &[Record], recorded: bool) -> Claim {
    match owner {
        Some(o) if o.uid == uid => Claim::Ours { created: o.created },
        Some(o) => Claim::Taken {
            owner: format!("tenant {} (uid {})", o.tenant, o.uid),
        },
        None if recorded => Claim::Free,
        None if existing.iter().any(|r| r.record_type != RecordType::Txt) => Claim::Taken {
            owner: "a record stackplane did not write".to_owned(),
        },
        None => Claim::Free,
    }
}

fn normalized_values(r: &Record) -> Vec<String> {
    let mut v: Vec<String> = r
        .values
        .iter()
        .map(|v| match r.record_type {
            RecordType::A | RecordType::Txt => v.trim().to_owned(),
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
        .filter(|e| e.record_type != wanted.record_type && e.record_type != RecordType::Txt)
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

/// The changes that delete every A or CNAME record set of a name (those the controller writes;
/// a TXT record of the same name is someone else's, e.g. a domain verification).
pub fn deletions(existing: &[Record]) -> Vec<RecordChange> {
    existing
        .iter()
        .filter(|r| r.record_type != RecordType::Txt)
        .cloned()
        .map(RecordChange::Delete)
        .collect()
}

/// The changes that delete a tenant's ownership record (its TXT sets as found).
pub fn owner_deletions(owner: &[Record]) -> Vec<RecordChange> {
    owner
        .iter()
        .filter(|r| {
            r.record_type == RecordType::Txt && Ownership::of(std::slice::from_ref(r)).is_some()
        })
        .cloned()
        .map(RecordChange::Delete)
        .collect()
}

/// What the tenant's record should be, from what the instance part left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WantedRecord {
    /// This record.
    Record(Record),
    /// The instance runs without a public address: EC2 assigns one at launch or never, so
    /// waiting would not help (a configuration error).
    NoPublicIp,
    /// The instance's address is not known yet: whatever record exists stays until it is.
    WaitForAddress,
    /// A shared tier and no ingress address configured: no record (one left from a dedicated
    /// tier goes, it would point at nothing).
    NoAddress,
    /// The tenant is idle and its instance stopped (or stopping): EC2 releases a stopped
    /// instance's public address, and another AWS customer may be given it, so the record is
    /// withdrawn rather than left pointing there. The ownership record stays: the name is still
    /// the tenant's, and starting the instance writes the record with its new address.
    Withdrawn,
}

/// The record `name` should be: an A record to a running dedicated instance, else the
/// ingress's address for a shared tier.
pub fn wanted_record(
    name: &str,
    instance: &InstanceResult,
    ingress: Option<&IngressAddress>,
) -> WantedRecord {
    match instance {
        InstanceResult::Running(Some(ip)) => WantedRecord::Record(a_record(name, ip)),
        InstanceResult::Running(None) => WantedRecord::NoPublicIp,
        InstanceResult::Progressing(_) => WantedRecord::WaitForAddress,
        InstanceResult::Parked { .. } => WantedRecord::Withdrawn,
        InstanceResult::Shared => match ingress {
            Some(a) => WantedRecord::Record(ingress_record(name, a)),
            None => WantedRecord::NoAddress,
        },
    }
}

/// The change batch that makes `existing` the `wanted` record and writes the tenant's
/// `ownership` record: created (failing the batch if someone else created one meanwhile) when
/// the name was free, upserted when it is ours but differs, left alone when it is as it should
/// be. A name taken by another tenant is never changed.
pub fn record_changes(
    wanted: &Record,
    existing: &[Record],
    claim: &Claim,
    owner_sets: &[Record],
    ownership: Record,
) -> Vec<RecordChange> {
    if matches!(claim, Claim::Taken { .. }) {
        return Vec::new();
    }
    let mut changes = changes_for(wanted, existing);
    match claim {
        Claim::Free => changes.push(RecordChange::Create(ownership)),
        _ if !owner_sets.iter().any(|r| same_record(r, &ownership)) => {
            changes.push(RecordChange::Upsert(ownership))
        }
        _ => {}
    }
    changes
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
    fn ownership_round_trips_and_ignores_foreign_values() {
        let o = Ownership {
            tenant: "acme".into(),
            uid: "0f6c-11".into(),
            retained: false,
            created: 1_700_000_000,
        };
        assert_eq!(Ownership::parse(&o.value()), Some(o.clone()));
        assert_eq!(Ownership::parse("\"v=spf1 -all\""), None);
        assert_eq!(Ownership::parse("\"heritage=external-dns,owner=x\""), None);
        let rec = owner_record("acme.example.com", &o);
        assert_eq!(rec.name, "_stackplane-owner.acme.example.com.");
        assert_eq!(owned_name(&rec.name).as_deref(), Some("acme.example.com."));
        assert_eq!(owned_name("acme.example.com."), None);
        assert_eq!(Ownership::of(&[rec]), Some(o));
    }

    #[test]
    fn the_holder_keeps_the_name() {
        let mine = Ownership {
            tenant: "a".into(),
            uid: "u-a".into(),
            retained: false,
            created: 5,
        };
        let a = a_record("x.example.com", "203.0.113.7");
        assert_eq!(
            claim("u-a", Some(&mine), std::slice::from_ref(&a), false),
            Claim::Ours { created: 5 }
        );
        assert!(
            matches!(claim("u-b", Some(&mine), std::slice::from_ref(&a), false), Claim::Taken { owner } if owner.contains("tenant a"))
        );
        // No ownership record: a record someone else wrote is not taken over ...
        assert!(matches!(
            claim("u-b", None, std::slice::from_ref(&a), false),
            Claim::Taken { .. }
        ));
        // ... unless the tenant's own status names it (written before ownership records).
        assert_eq!(claim("u-b", None, &[a], true), Claim::Free);
        assert_eq!(claim("u-b", None, &[], false), Claim::Free);
    }

    #[test]
    fn txt_records_of_the_same_name_are_left_alone() {
        let a = a_record("acme.example.com", "203.0.113.7");
        let txt = Record {
            name: "acme.example.com.".into(),
            record_type: RecordType::Txt,
            ttl: 300,
            values: vec!["\"google-site-verification=x\"".into()],
        };
        assert!(changes_for(&a, &[a.clone(), txt.clone()]).is_empty());
        assert_eq!(deletions(&[a.clone(), txt]), vec![RecordChange::Delete(a)]);
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

    /// What the instance part left × whether an ingress address is configured.
    #[test]
    fn the_wanted_record_for_every_instance_result() {
        let name = "acme.example.com";
        let ingress = IngressAddress::Host("lb.example.net".into());
        let a = |ip: &str| WantedRecord::Record(a_record(name, ip));
        let cname = WantedRecord::Record(ingress_record(name, &ingress));
        let running = InstanceResult::Running(Some("203.0.113.7".into()));
        let table = [
            (running.clone(), Some(&ingress), a("203.0.113.7")),
            (running, None, a("203.0.113.7")),
            (
                InstanceResult::Running(None),
                Some(&ingress),
                WantedRecord::NoPublicIp,
            ),
            (
                InstanceResult::Running(None),
                None,
                WantedRecord::NoPublicIp,
            ),
            (
                InstanceResult::Progressing("starting".into()),
                Some(&ingress),
                WantedRecord::WaitForAddress,
            ),
            (
                InstanceResult::Progressing("starting".into()),
                None,
                WantedRecord::WaitForAddress,
            ),
            (InstanceResult::Shared, Some(&ingress), cname),
            (InstanceResult::Shared, None, WantedRecord::NoAddress),
        ];
        let parked = |settled| InstanceResult::Parked {
            settled,
            message: "stopped".into(),
        };
        let table = table.into_iter().chain([
            (parked(true), Some(&ingress), WantedRecord::Withdrawn),
            (parked(true), None, WantedRecord::Withdrawn),
            (parked(false), Some(&ingress), WantedRecord::Withdrawn),
            (parked(false), None, WantedRecord::Withdrawn),
        ]);
        for (instance, ingress, expected) in table {
            assert_eq!(
                wanted_record(name, &instance, ingress),
                expected,
                "{instance:?}, {ingress:?}"
            );
        }
    }

    /// Every claim × an ownership record as it should be, stale, or missing.
    #[test]
    fn the_change_batch_for_every_claim() {
        let name = "acme.example.com.";
        let wanted = a_record(name, "203.0.113.7");
        let ownership = Record {
            name: owner_name(name),
            record_type: RecordType::Txt,
            ttl: TTL,
            values: vec!["\"tenant=acme\"".into()],
        };
        let stale = Record {
            values: vec!["\"tenant=old\"".into()],
            ..ownership.clone()
        };
        let upsert_a = RecordChange::Upsert(wanted.clone());
        let ours = Claim::Ours { created: 1 };
        let taken = Claim::Taken {
            owner: "tenant other".into(),
        };
        // (claim, existing record sets, ownership record sets, the batch)
        type Case = (Claim, Vec<Record>, Vec<Record>, Vec<RecordChange>);
        let cases: Vec<Case> = vec![
            // A free name: the record, and the ownership record created (never upserted).
            (
                Claim::Free,
                vec![],
                vec![],
                vec![upsert_a.clone(), RecordChange::Create(ownership.clone())],
            ),
            // Ours, as it should be: nothing to send.
            (
                ours.clone(),
                vec![wanted.clone()],
                vec![ownership.clone()],
                vec![],
            ),
            // Ours with a stale ownership record: rewritten.
            (
                ours.clone(),
                vec![wanted.clone()],
                vec![stale.clone()],
                vec![RecordChange::Upsert(ownership.clone())],
            ),
            // Ours, the record missing: the record alone.
            (ours, vec![], vec![ownership.clone()], vec![upsert_a]),
            // Someone else's: never touched, whatever it holds.
            (taken.clone(), vec![], vec![stale], vec![]),
            (taken, vec![wanted.clone()], vec![], vec![]),
        ];
        for (claim, existing, owners, expected) in cases {
            let got = record_changes(&wanted, &existing, &claim, &owners, ownership.clone());
            assert_eq!(
                got, expected,
                "{claim:?}, existing {existing:?}, owners {owners:?}"
            );
        }
    }
}
