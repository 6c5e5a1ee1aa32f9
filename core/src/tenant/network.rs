//! The network policies of a tenant namespace: what may reach its pods and what they may reach.
//!
//! Ingress: the namespace's own pods and the ingress controller's namespace. Egress is denied by
//! default; allowed are DNS (port 53), the namespace's own pods, what the Platform declares
//! (`spec.egress[]`) and, for stackplane's backup Jobs only, the networks of the object store and
//! the tenants' databases (`--backup-egress-cidrs`). Link-local networks ([`NEVER_REACHABLE`]:
//! the cloud metadata endpoint answers there with the node's credentials) are cut out of every
//! allowed network, and a declared network inside them is refused ([`egress_problems`]).
//!
//! Kubernetes accepts in an ipBlock's `except` only networks strictly inside its `cidr`, so
//! each block excepts exactly those of [`NEVER_REACHABLE`] and of the cluster's own ranges that
//! it strictly contains ([`ip_block`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stackplane_crds::{EgressRule, PlatformSpec};

use crate::contract::labels::BACKUP;

/// The label Kubernetes 1.21+ sets on every namespace (its name); the controller sets it on
/// tenant namespaces itself, since 1.20 does not.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The cloud metadata endpoint (EC2, GCE, Azure): it hands out the node's credentials.
pub const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Networks no tenant pod may reach, whatever is declared: IPv4 link-local (the metadata
/// endpoint [`METADATA_ADDRESS`]), IPv6 link-local, and EC2's IPv6 metadata endpoint.
pub const NEVER_REACHABLE: [IpNet; 3] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
    )),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        128,
    )),
];

/// What `internet: true` starts from: every IPv4 and every IPv6 address.
pub const INTERNET: [IpNet; 2] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
];

/// Names of the policies, one per concern (each policy is additive in Kubernetes: a pod may do
/// what any policy selecting it allows).
pub const DEFAULT_DENY_INGRESS: &str = "default-deny-ingress";
pub const DEFAULT_DENY_EGRESS: &str = "default-deny-egress";
pub const ALLOW_SAME_NAMESPACE: &str = "allow-same-namespace";
pub const ALLOW_INGRESS_CONTROLLER: &str = "allow-ingress-controller";
pub const ALLOW_DNS: &str = "allow-dns";
pub const ALLOW_PLATFORM_EGRESS: &str = "allow-platform-egress";
pub const ALLOW_BACKUP_EGRESS: &str = "allow-backup-egress";

/// The DNS port, open over UDP and TCP to any destination: resolvers live in kube-system, on
/// the node (node-local DNS answers on a link-local address) or outside the cluster.
const DNS_PORT: i32 = 53;

/// A network in CIDR notation, as a Platform or a flag gives it: the network, or why not.
/// A CIDR with host bits set (`10.0.0.1/8`) is refused rather than silently widened.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a network in CIDR notation (e.g. 203.0.113.0/24)"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The networks of a comma-separated flag (`--cluster-cidrs 10.244.0.0/16,10.96.0.0/12`),
/// each checked by [`parse_cidr`]; for `--backup-egress-cidrs`, `reachable` also refuses
/// networks inside [`NEVER_REACHABLE`].
pub fn parse_cidr_list(values: &[String], reachable: bool) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for value in values.iter().flat_map(|v| v.split(',')) {
        if value.trim().is_empty() {
            continue;
        }
        let net = parse_cidr(value)?;
        if reachable {
            never_reachable_problem(net)?;
        }
        nets.push(net);
    }
    Ok(nets)
}

/// Refuses a network inside (or equal to) one of [`NEVER_REACHABLE`].
fn never_reachable_problem(net: IpNet) -> Result<(), String> {
    match NEVER_REACHABLE.iter().find(|never| never.contains(&net)) {
        Some(never) => Err(format!(
            "{net} is inside {never}, which is never reachable (link-local: the cloud metadata \
             endpoint {METADATA_ADDRESS} hands out the node's credentials there)"
        )),
        None => Ok(()),
    }
}

/// What is wrong with a Platform's `spec.egress` (the OpenAPI schema cannot say): a bad CIDR, a
/// network inside link-local, `internet: true` beside CIDRs, or a rule allowing nothing.
/// Empty when it is usable.
pub fn egress_problems(spec: &PlatformSpec) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, rule) in spec.egress.iter().enumerate() {
        let at = format!("egress[{i}]");
        match (rule.internet, rule.cidrs.is_empty()) {
            (true, false) => problems.push(format!(
                "{at}: internet: true already allows every address outside the cluster; give \
                 either internet or cidrs, not both"
            )),
            (false, true) => problems.push(format!(
                "{at}: allows nothing; give cidrs (e.g. 203.0.113.0/24) or internet: true"
            )),
            _ => {}
        }
        for cidr in &rule.cidrs {
            if let Err(why) = parse_cidr(cidr).and_then(never_reachable_problem) {
                problems.push(format!("{at}: {why}"));
            }
        }
    }
    problems
}

/// `cidr` as an ipBlock: every network of [`NEVER_REACHABLE`] and of `cluster` strictly inside
/// it is excepted. A network declared inside a cluster range (equal to it, or narrower) is a
/// deliberate grant and is kept as it is.
pub fn ip_block(cidr: IpNet, cluster: &[IpNet]) -> IPBlock {
    let except: Vec<String> = NEVER_REACHABLE
        .iter()
        .chain(cluster)
        .filter(|inner| cidr.contains(*inner) && inner.prefix_len() > cidr.prefix_len())
        .map(ToString::to_string)
        .collect();
    IPBlock {
        cidr: cidr.to_string(),
        except: (!except.is_empty()).then_some(except),
    }
}

/// The peers of one egress rule of a Platform. CIDRs that do not parse were refused by
/// [`egress_problems`] before any plan is made; here they are skipped, never widened.
fn rule_peers(rule: &EgressRule, cluster: &[IpNet]) -> Vec<NetworkPolicyPeer> {
    let nets: Vec<IpNet> = if rule.internet {
        INTERNET.to_vec()
    } else {
        rule.cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .filter(|net| never_reachable_problem(*net).is_ok())
            .collect()
    };
    nets.into_iter()
        .map(|net| NetworkPolicyPeer {
            ip_block: Some(ip_block(net, cluster)),
            ..NetworkPolicyPeer::default()
        })
        .collect()
}

/// Parses a Kubernetes label selector (`key=value`, `key==value`, `key!=value`,
/// `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, comma-separated: all must hold).
/// An empty selector is refused: it would select every namespace.
pub fn parse_label_selector(text: &str) -> Result<LabelSelector, String> {
    let mut match_labels = BTreeMap::new();
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let r = requirement.trim();
        if r.is_empty() {
            return Err(format!("{text:?}: an empty requirement"));
        }
        let expression = |key: &str, operator: &str, values: Option<Vec<String>>| {
            check_key(key).map(|()| LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values,
            })
        };
        if let Some(open) = r.find('(') {
            let close = r
                .strip_suffix(')')
                .ok_or_else(|| format!("{r:?}: a set must end with ')'"))?;
            let mut head = r[..open].split_whitespace();
            let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
                return Err(format!(
                    "{r:?}: expected `key in (values)` or `key notin (values)`"
                ));
            };
            let operator = match op {
                "in" => "In",
                "notin" => "NotIn",
                _ => return Err(format!("{r:?}: unknown set operator {op:?}")),
            };
            let values = set_values(&close[open + 1..])?;
            expressions.push(expression(key, operator, Some(values))?);
        } else if let Some((key, value)) = r.split_once("!=") {
            let value = checked_value(value.trim())?;
            expressions.push(expression(key.trim(), "NotIn", Some(vec![value]))?);
        } else if let Some((key, value)) = r.split_once("==").or_else(|| r.split_once('=')) {
            check_key(key.trim())?;
            match_labels.insert(key.trim().to_owned(), checked_value(value.trim())?);
        } else if let Some(key) = r.strip_prefix('!') {
            expressions.push(expression(key.trim(), "DoesNotExist", None)?);
        } else {
            expressions.push(expression(r, "Exists", None)?);
        }
    }
    if match_labels.is_empty() && expressions.is_empty() {
        return Err("an empty selector would select every namespace".to_owned());
    }
    Ok(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

/// The comma-separated requirements of a selector (commas inside a set belong to the set).
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, ch) in text.char_indices() {
        match ch {
            '(' if depth == 0 => depth = 1,
            ')' if depth == 1 => depth = 0,
            '(' | ')' => return Err(format!("{text:?}: unbalanced parentheses")),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{text:?}: unbalanced parentheses"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn set_values(inside: &str) -> Result<Vec<String>, String> {
    let values = inside
        .split(',')
        .map(|v| checked_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err(format!("({inside}): a set needs at least one value"));
    }
    Ok(values)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters
/// (alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric).
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.len() <= 253
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if name.is_empty() || !prefix_ok || !stackplane_crds::naming::is_label_value(name) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(())
}

fn checked_value(value: &str) -> Result<String, String> {
    if stackplane_crds::naming::is_label_value(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a label value"))
    }
}

/// The network policies of a tenant namespace (see the module's doc). `meta` names an object of
/// the tenant; `ingress_namespaces` selects the ingress controller's namespace; `cluster` are the
/// cluster's pod and service ranges; `backup_egress` what backup Jobs may reach besides.
pub fn policies(
    meta: &impl Fn(&str, &[(&str, &str)]) -> ObjectMeta,
    spec: &PlatformSpec,
    ingress_namespaces: &LabelSelector,
    cluster: &[IpNet],
    backup_egress: &[IpNet],
) -> Vec<NetworkPolicy> {
    let all_pods = LabelSelector::default;
    let policy = |name: &str,
                  pods: LabelSelector,
                  ingress: Option<Vec<NetworkPolicyIngressRule>>,
                  egress: Option<Vec<NetworkPolicyEgressRule>>,
                  types: &[&str]| NetworkPolicy {
        metadata: meta(name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(types.iter().map(|t| (*t).to_owned()).collect()),
            ingress,
            egress,
        }),
    };
    let from = |peer: NetworkPolicyPeer| {
        Some(vec![NetworkPolicyIngressRule {
            from: Some(vec![peer]),
            ..NetworkPolicyIngressRule::default()
        }])
    };
    let same_namespace = || NetworkPolicyPeer {
        pod_selector: Some(all_pods()),
        ..NetworkPolicyPeer::default()
    };
    let dns_ports = ["UDP", "TCP"]
        .map(|protocol| NetworkPolicyPort {
            port: Some(IntOrString::Int(DNS_PORT)),
            protocol: Some(protocol.to_owned()),
            ..NetworkPolicyPort::default()
        })
        .to_vec();

    let mut out = vec![
        // No rules: everything not allowed by another policy is denied, both ways.
        policy(DEFAULT_DENY_INGRESS, all_pods(), None, None, &["Ingress"]),
        policy(DEFAULT_DENY_EGRESS, all_pods(), None, None, &["Egress"]),
        policy(
            ALLOW_SAME_NAMESPACE,
            all_pods(),
            from(same_namespace()),
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![same_namespace()]),
                ..NetworkPolicyEgressRule::default()
            }]),
            &["Ingress", "Egress"],
        ),
        policy(
            ALLOW_INGRESS_CONTROLLER,
            all_pods(),
            from(NetworkPolicyPeer {
                namespace_selector: Some(ingress_namespaces.clone()),
                ..NetworkPolicyPeer::default()
            }),
            None,
            &["Ingress"],
        ),
        policy(
            ALLOW_DNS,
            all_pods(),
            None,
            Some(vec![NetworkPolicyEgressRule {
                ports: Some(dns_ports),
                to: None,
            }]),
            &["Egress"],
        ),
    ];
    let platform_rules: Vec<NetworkPolicyEgressRule> = spec
        .egress
        .iter()
        .map(|rule| NetworkPolicyEgressRule {
            to: Some(rule_peers(rule, cluster)),
            ports: (!rule.ports.is_empty()).then(|| {
                rule.ports
                    .iter()
                    .map(|p| NetworkPolicyPort {
                        port: Some(IntOrString::Int(p.port)),
                        protocol: Some(p.protocol.as_str().to_owned()),
                        ..NetworkPolicyPort::default()
                    })
                    .collect()
            }),
        })
        // A rule whose every CIDR was refused must not become "to anywhere".
        .filter(|r| r.to.as_ref().is_some_and(|to| !to.is_empty()))
        .collect();
    if !platform_rules.is_empty() {
        out.push(policy(
            ALLOW_PLATFORM_EGRESS,
            all_pods(),
            None,
            Some(platform_rules),
            &["Egress"],
        ));
    }
    if !backup_egress.is_empty() {
        // Only pods carrying the backup label: stackplane's backup Jobs, never the Platform's
        // components (whose labels the controller sets).
        let backup_jobs = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: BACKUP.to_owned(),
                operator: "Exists".to_owned(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        let to = backup_egress
            .iter()
            .filter(|net| never_reachable_problem(**net).is_ok())
            .map(|net| NetworkPolicyPeer {
                ip_block: Some(ip_block(*net, cluster)),
                ..NetworkPolicyPeer::default()
            })
            .collect::<Vec<_>>();
        if !to.is_empty() {
            out.push(policy(
                ALLOW_BACKUP_EGRESS,
                backup_jobs,
                None,
                Some(vec![NetworkPolicyEgressRule {
                    to: Some(to),
                    ports: None,
                }]),
                &["Egress"],
            ));
        }
    }
    out
}

/// Whether `policies` (a namespace's, as stored) let a pod labelled `pod_labels` open a
/// connection to `address:port` over `protocol`, as a conforming network plugin enforces them:
/// an Egress policy selecting the pod must have a rule whose ports and an ipBlock peer (or no
/// peer list: anywhere) admit it; a pod with no Egress policy selecting it is unrestricted.
/// Only addresses outside the namespace are asked about, so pod and namespace peers never
/// match. For tests and diagnostics that cannot send packets (the main test cluster has no node).
pub fn egress_allowed(
    policies: &[NetworkPolicy],
    pod_labels: &BTreeMap<String, String>,
    address: std::net::IpAddr,
    port: i32,
    protocol: &str,
) -> bool {
    let selecting: Vec<&NetworkPolicySpec> = policies
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .filter(|s| {
            s.policy_types
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == "Egress"))
        })
        .filter(|s| {
            s.pod_selector
                .as_ref()
                .is_none_or(|sel| selects(sel, pod_labels))
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    let port_matches = |p: &NetworkPolicyPort| {
        p.protocol.as_deref().unwrap_or("TCP") == protocol
            && match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => {
                    *n == port || p.end_port.is_some_and(|end| (*n..=end).contains(&port))
                }
                // Named ports are container ports: not something an address outside has.
                Some(IntOrString::String(_)) => false,
            }
    };
    let peer_matches = |peer: &NetworkPolicyPeer| {
        peer.ip_block.as_ref().is_some_and(|block| {
            let inside = |cidr: &str| cidr.parse::<IpNet>().is_ok_and(|n| n.contains(&address));
            inside(&block.cidr) && !block.except.iter().flatten().any(|e| inside(e))
        })
    };
    selecting
        .iter()
        .flat_map(|s| s.egress.iter().flatten())
        .any(|rule| {
            rule.ports
                .as_ref()
                .is_none_or(|ports| ports.is_empty() || ports.iter().any(port_matches))
                && rule
                    .to
                    .as_ref()
                    .is_none_or(|to| to.is_empty() || to.iter().any(peer_matches))
        })
}

/// Whether `selector` selects an object labelled `labels`.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let equal = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = || value.is_some_and(|v| e.values.iter().flatten().any(|x| x == v));
        match e.operator.as_str() {
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "In" => listed(),
            "NotIn" => !listed(),
            _ => false,
        }
    });
    equal && expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::{EgressPort, EgressProtocol, Platform};

    fn spec(egress: Vec<EgressRule>) -> PlatformSpec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/platforms/tackle.yaml");
        let p: Platform =
            serde_saphyr::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
        PlatformSpec { egress, ..p.spec }
    }

    fn cidrs(list: &[&str]) -> EgressRule {
        EgressRule {
            cidrs: list.iter().map(|c| (*c).to_owned()).collect(),
            ..EgressRule::default()
        }
    }

    fn internet() -> EgressRule {
        EgressRule {
            internet: true,
            ..EgressRule::default()
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("a CIDR")
    }

    const CLUSTER: [&str; 2] = ["10.244.0.0/16", "10.96.0.0/12"];

    fn policies_of(egress: Vec<EgressRule>, backup: &[&str]) -> Vec<NetworkPolicy> {
        let meta = |name: &str, _: &[(&str, &str)]| ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        };
        let cluster: Vec<IpNet> = CLUSTER.iter().map(|c| net(c)).collect();
        let backup: Vec<IpNet> = backup.iter().map(|c| net(c)).collect();
        policies(
            &meta,
            &spec(egress),
            &LabelSelector::default(),
            &cluster,
            &backup,
        )
    }

    fn component() -> BTreeMap<String, String> {
        BTreeMap::from([("stackplane.io/component".to_owned(), "api".to_owned())])
    }

    fn backup_job() -> BTreeMap<String, String> {
        BTreeMap::from([(BACKUP.to_owned(), "acme-manual-1".to_owned())])
    }

    fn allowed(p: &[NetworkPolicy], pod: &BTreeMap<String, String>, addr: &str, port: i32) -> bool {
        egress_allowed(p, pod, addr.parse().expect("an address"), port, "TCP")
    }

    fn named<'a>(p: &'a [NetworkPolicy], name: &str) -> Option<&'a NetworkPolicy> {
        p.iter().find(|p| p.metadata.name.as_deref() == Some(name))
    }

    #[test]
    fn egress_is_denied_by_default_and_dns_is_open() {
        let p = policies_of(vec![], &[]);
        let deny = named(&p, DEFAULT_DENY_EGRESS).and_then(|p| p.spec.as_ref());
        let deny = deny.expect("default-deny-egress");
        assert_eq!(deny.policy_types, Some(vec!["Egress".to_owned()]));
        assert_eq!(deny.egress, None, "no rules: deny");
        assert_eq!(deny.pod_selector, Some(LabelSelector::default()));
        assert!(named(&p, ALLOW_PLATFORM_EGRESS).is_none());
        assert!(named(&p, ALLOW_BACKUP_EGRESS).is_none());
        for addr in ["1.1.1.1", "10.96.0.10", "203.0.113.9"] {
            assert!(allowed(&p, &component(), addr, 53), "DNS to {addr}");
            let dns_udp = egress_allowed(&p, &component(), addr.parse().expect("ip"), 53, "UDP");
            assert!(dns_udp, "DNS over UDP to {addr}");
            assert!(!allowed(&p, &component(), addr, 443), "443 to {addr}");
        }
        assert!(!allowed(&p, &component(), "169.254.169.254", 80));
    }

    #[test]
    fn the_metadata_endpoint_is_never_allowed() {
        let cases = [
            vec![internet()],
            vec![cidrs(&["0.0.0.0/0"])],
            vec![cidrs(&["169.0.0.0/8", "::/0"])],
            vec![internet(), cidrs(&["203.0.113.0/24"])],
        ];
        for egress in cases {
            let p = policies_of(egress.clone(), &["0.0.0.0/0"]);
            for pod in [component(), backup_job()] {
                for port in [80, 443, 8080] {
                    assert!(
                        !allowed(&p, &pod, "169.254.169.254", port),
                        "{egress:?} port {port}"
                    );
                    assert!(!allowed(&p, &pod, "fd00:ec2::254", port), "{egress:?}");
                    assert!(!allowed(&p, &pod, "fe80::1", port), "{egress:?}");
                }
            }
        }
        let p = policies_of(vec![internet()], &[]);
        assert!(allowed(&p, &component(), "203.0.113.9", 443));
        assert!(allowed(&p, &component(), "2001:db8::1", 443));
    }

    #[test]
    fn internet_excepts_link_local_and_the_cluster_ranges() {
        let p = policies_of(vec![internet()], &[]);
        let spec = named(&p, ALLOW_PLATFORM_EGRESS)
            .and_then(|p| p.spec.clone())
            .expect("allow-platform-egress");
        let to = spec.egress.expect("rules")[0].to.clone().expect("peers");
        let blocks: Vec<IPBlock> = to.into_iter().filter_map(|p| p.ip_block).collect();
        assert_eq!(
            blocks,
            vec![
                IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: Some(vec![
                        "169.254.0.0/16".into(),
                        "10.244.0.0/16".into(),
                        "10.96.0.0/12".into()
                    ]),
                },
                IPBlock {
                    cidr: "::/0".into(),
                    except: Some(vec!["fe80::/10".into(), "fd00:ec2::254/128".into()]),
                },
            ]
        );
        assert!(!allowed(&p, &component(), "10.244.3.7", 8080), "other pods");
        assert!(
            !allowed(&p, &component(), "10.96.0.1", 443),
            "the API server"
        );
    }

    #[test]
    fn only_networks_strictly_inside_a_block_are_excepted() {
        let cluster: Vec<IpNet> = CLUSTER.iter().map(|c| net(c)).collect();
        // Kubernetes refuses an except equal to or outside the cidr.
        assert_eq!(ip_block(net("203.0.113.0/24"), &cluster).except, None);
        assert_eq!(ip_block(net("10.244.0.0/16"), &cluster).except, None);
        assert_eq!(
            ip_block(net("10.0.0.0/8"), &cluster).except,
            Some(vec!["10.244.0.0/16".into(), "10.96.0.0/12".into()])
        );
        assert_eq!(
            ip_block(net("169.0.0.0/8"), &cluster).except,
            Some(vec!["169.254.0.0/16".into()])
        );
    }

    #[test]
    fn ports_are_carried_and_empty_ports_mean_every_port() {
        let smtp = EgressRule {
            ports: vec![
                EgressPort {
                    port: 587,
                    protocol: EgressProtocol::Tcp,
                },
                EgressPort {
                    port: 3478,
                    protocol: EgressProtocol::Udp,
                },
            ],
            ..cidrs(&["198.51.100.0/24"])
        };
        let p = policies_of(vec![smtp, cidrs(&["192.0.2.10/32"])], &[]);
        let rules = named(&p, ALLOW_PLATFORM_EGRESS)
            .and_then(|p| p.spec.clone())
            .and_then(|s| s.egress)
            .expect("rules");
        let ports = rules[0].ports.clone().expect("ports");
        assert_eq!(ports[0].port, Some(IntOrString::Int(587)));
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        assert_eq!(rules[1].ports, None);
        assert!(allowed(&p, &component(), "198.51.100.4", 587));
        assert!(!allowed(&p, &component(), "198.51.100.4", 25));
        assert!(allowed(&p, &component(), "192.0.2.10", 5432));
        assert!(!allowed(&p, &component(), "192.0.2.11", 5432));
    }

    #[test]
    fn backup_jobs_alone_reach_the_backup_networks() {
        let p = policies_of(vec![], &["192.0.2.0/24"]);
        let policy = named(&p, ALLOW_BACKUP_EGRESS).expect("allow-backup-egress");
        let selector = policy.spec.as_ref().and_then(|s| s.pod_selector.clone());
        assert_eq!(
            selector
                .and_then(|s| s.match_expressions)
                .map(|e| e[0].key.clone()),
            Some(BACKUP.to_owned())
        );
        assert!(allowed(&p, &backup_job(), "192.0.2.5", 5432));
        assert!(!allowed(&p, &component(), "192.0.2.5", 5432));
    }

    #[test]
    fn egress_problems_name_what_is_wrong() {
        assert!(egress_problems(&spec(vec![
            internet(),
            cidrs(&["0.0.0.0/0", "2001:db8::/32"])
        ]))
        .is_empty());
        let problems = egress_problems(&spec(vec![
            cidrs(&["169.254.0.0/16"]),
            cidrs(&["169.254.169.254/32"]),
            cidrs(&["fe80::1/128"]),
            cidrs(&["10.0.0/8", "10.0.0.1/8"]),
            internet(),
            EgressRule {
                internet: true,
                ..cidrs(&["203.0.113.0/24"])
            },
            EgressRule::default(),
        ]));
        let has = |at: &str, text: &str| {
            problems
                .iter()
                .any(|p| p.starts_with(at) && p.contains(text))
        };
        assert!(has("egress[0]", "never reachable"), "{problems:?}");
        assert!(has("egress[1]", "169.254.169.254"), "{problems:?}");
        assert!(has("egress[2]", "fe80::/10"), "{problems:?}");
        assert!(
            has("egress[3]", "not a network in CIDR notation"),
            "{problems:?}"
        );
        assert!(
            has("egress[3]", "the network is 10.0.0.0/8"),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.starts_with("egress[4]")),
            "{problems:?}"
        );
        assert!(has("egress[5]", "not both"), "{problems:?}");
        assert!(has("egress[6]", "allows nothing"), "{problems:?}");
        // A refused network never becomes a rule, let alone "to anywhere".
        let p = policies_of(vec![cidrs(&["169.254.169.254/32"])], &[]);
        assert!(named(&p, ALLOW_PLATFORM_EGRESS).is_none());
    }

    #[test]
    fn the_example_platforms_declare_usable_egress() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/platforms");
        let mut declaring = Vec::new();
        for entry in std::fs::read_dir(dir).expect("examples") {
            let path = entry.expect("entry").path();
            let p: Platform =
                serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("read"))
                    .expect("parse");
            assert_eq!(egress_problems(&p.spec), Vec::<String>::new(), "{path:?}");
            if !p.spec.egress.is_empty() {
                declaring.push(p.metadata.name.unwrap_or_default());
            }
        }
        declaring.sort();
        assert_eq!(
            declaring,
            [
                "clientcontact",
                "leadgen-pro",
                "leadsite-ai",
                "leadsite-io",
                "stackpro-business"
            ]
        );
    }

    #[test]
    fn flags_refuse_what_would_open_link_local() {
        let list = |s: &str| vec![s.to_owned()];
        assert_eq!(
            parse_cidr_list(&list("10.244.0.0/16, 10.96.0.0/12,"), false),
            Ok(vec![net("10.244.0.0/16"), net("10.96.0.0/12")])
        );
        assert!(parse_cidr_list(&list("169.254.169.254/32"), true).is_err());
        assert!(parse_cidr_list(&list("nope"), false).is_err());
    }

    #[test]
    fn label_selectors_parse_as_kubectl_reads_them() {
        let s = parse_label_selector(
            "app.kubernetes.io/name=ingress-nginx, tier in (edge,public),!legacy,env!=dev,team",
        )
        .expect("a selector");
        assert_eq!(
            s.match_labels,
            Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "ingress-nginx".to_owned()
            )]))
        );
        let ops: Vec<(String, String, Option<Vec<String>>)> = s
            .match_expressions
            .expect("expressions")
            .into_iter()
            .map(|e| (e.key, e.operator, e.values))
            .collect();
        assert_eq!(
            ops,
            vec![
                (
                    "tier".into(),
                    "In".into(),
                    Some(vec!["edge".into(), "public".into()])
                ),
                ("legacy".into(), "DoesNotExist".into(), None),
                ("env".into(), "NotIn".into(), Some(vec!["dev".into()])),
                ("team".into(), "Exists".into(), None),
            ]
        );
        let ns = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "ingress-nginx".to_owned(),
            ),
            ("tier".to_owned(), "edge".to_owned()),
            ("team".to_owned(), "net".to_owned()),
        ]);
        assert!(selects(
            &parse_label_selector("app.kubernetes.io/name==ingress-nginx,tier notin (x)")
                .expect("selector"),
            &ns
        ));
        for bad in [
            "",
            " ",
            "a=b,",
            "tier in (edge",
            "tier within (a)",
            "a=b c",
            "Bad Key=x",
            "a in ()",
        ] {
            assert!(parse_label_selector(bad).is_err(), "{bad:?}");
        }
    }
}
