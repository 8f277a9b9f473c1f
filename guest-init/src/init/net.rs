//! The guest's network, as far as guest-init owns it: the loopback interface is up in every
//! sandbox (with a network or without), and the host's `ConfigureNetwork` call sets the rest
//! (interfaces found by MAC, addresses, routes, MTU) over rtnetlink, and what the containers'
//! `/etc/resolv.conf` and `/etc/hosts` say.
//!
//! A request is checked whole ([`Plan::parse`]) before anything is applied: a bad value is an
//! error naming it, with no interface half configured.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::api::agent::ConfigureNetworkRequest;
use crate::api::net::{Cidr, Mac};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("no interface has MAC {0}")]
    NoSuchInterface(Mac),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What the containers' resolver files say about this sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The sandbox's addresses, for the hostname's line in `/etc/hosts`.
    pub addresses: Vec<IpAddr>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Identity {
    /// `/etc/resolv.conf`; empty without nameservers (docker's `--network none`).
    pub fn resolv_conf(&self) -> String {
        let mut s = String::new();
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.search.is_empty() {
            s.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub mac: Mac,
    pub name: Option<String>,
    pub addresses: Vec<Cidr>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    /// The interface (by MAC) it leaves through.
    pub via: Mac,
}

/// A checked `ConfigureNetworkRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<InterfacePlan>,
    pub routes: Vec<RoutePlan>,
    pub identity: Identity,
}

/// Interface names the kernel takes: at most 15 bytes, no '/', ':' or whitespace.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 16
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// Resolver words: no whitespace (one line each) and nothing a resolver would read as a
/// second statement.
fn valid_word(w: &str) -> bool {
    !w.is_empty() && w.len() <= 253 && !w.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Plan {
    pub fn parse(req: &ConfigureNetworkRequest) -> Result<Plan, NetError> {
        let bad = |m: String| NetError::Invalid(m);
        let mut interfaces = Vec::new();
        for i in &req.interfaces {
            let mac: Mac = i.mac.parse().map_err(|e| bad(format!("{e}")))?;
            if interfaces.iter().any(|p: &InterfacePlan| p.mac == mac) {
                return Err(bad(format!("interface {mac} is listed twice")));
            }
            let name = match i.name.as_str() {
                "" => None,
                n if valid_ifname(n) => Some(n.to_string()),
                n => {
                    return Err(bad(format!(
                        "interface name {n:?}: at most 15 bytes, no '/', ':' or spaces"
                    )))
                }
            };
            let addresses = i
                .addresses
                .iter()
                .map(|a| a.parse::<Cidr>().map_err(|e| bad(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let mtu = match i.mtu {
                0 => None,
                m @ 68..=65535 => Some(m),
                m => return Err(bad(format!("MTU {m}: must be between 68 and 65535"))),
            };
            interfaces.push(InterfacePlan {
                mac,
                name,
                addresses,
                mtu,
            });
        }
        let mut routes = Vec::new();
        for r in &req.routes {
            let destination = match r.destination.as_str() {
                "default" | "" => Cidr {
                    addr: IpAddr::from([0, 0, 0, 0]),
                    prefix: 0,
                },
                d => d
                    .parse()
                    .map_err(|e: crate::api::net::ParseError| bad(e.to_string()))?,
            };
            let gateway = match r.gateway.as_str() {
                "" => None,
                g => Some(
                    g.parse::<IpAddr>()
                        .map_err(|_| bad(format!("gateway {g:?}: not an IP address")))?,
                ),
            };
            if gateway.is_some_and(|g| g.is_ipv4() != destination.addr.is_ipv4()) {
                return Err(bad(format!(
                    "route to {destination}: gateway of another family"
                )));
            }
            let via = if r.interface_mac.is_empty() {
                let g = gateway.ok_or_else(|| {
                    bad(format!(
                        "route to {destination}: needs a gateway or an interface"
                    ))
                })?;
                interfaces
                    .iter()
                    .find(|i| i.addresses.iter().any(|a| a.contains(g)))
                    .map(|i| i.mac)
                    .ok_or_else(|| bad(format!("gateway {g}: on no interface's prefix")))?
            } else {
                let m: Mac = r.interface_mac.parse().map_err(|e| bad(format!("{e}")))?;
                if !interfaces.iter().any(|i| i.mac == m) {
                    return Err(bad(format!(
                        "route to {destination}: interface {m} is not configured"
                    )));
                }
                m
            };
            routes.push(RoutePlan {
                destination,
                gateway,
                via,
            });
        }
        let nameservers = req
            .dns_servers
            .iter()
            .map(|n| {
                n.parse::<IpAddr>()
                    .map_err(|_| bad(format!("DNS server {n:?}: not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for w in req.dns_search.iter().chain(&req.dns_options) {
            if !valid_word(w) {
                return Err(bad(format!(
                    "DNS search or option {w:?}: one word expected"
                )));
            }
        }
        let identity = Identity {
            addresses: interfaces
                .iter()
                .flat_map(|i| i.addresses.iter().map(|a| a.addr))
                .collect(),
            nameservers,
            search: req.dns_search.clone(),
            options: req.dns_options.clone(),
        };
        Ok(Plan {
            interfaces,
            routes,
            identity,
        })
    }
}

/// Brings `lo` up.
pub async fn loopback_up() -> Result<(), NetError> {
    with_handle(|h| async move {
        h.link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .map_err(nl("bringing lo up"))
    })
    .await
}

/// Applies a checked plan: each interface renamed, its MTU set, up, its addresses added;
/// then the routes.
pub async fn apply(plan: &Plan) -> Result<(), NetError> {
    with_handle(|h| async move {
        let links: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing interfaces"))?;
        let index_of = |mac: Mac| {
            links
                .iter()
                .find(|l| {
                    l.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::Address(b) if b[..] == mac.0[..]))
                })
                .map(|l| l.header.index)
                .ok_or(NetError::NoSuchInterface(mac))
        };
        for i in &plan.interfaces {
            let index = index_of(i.mac)?;
            let mut set = LinkUnspec::new_with_index(index);
            if let Some(n) = &i.name {
                // A rename needs the link down, which it is: nothing brought it up.
                set = set.name(n.clone());
            }
            if let Some(m) = i.mtu {
                set = set.mtu(m);
            }
            h.link()
                .set(set.build())
                .execute()
                .await
                .map_err(nl(&format!("configuring interface {}", i.mac)))?;
            for a in &i.addresses {
                h.address()
                    .add(index, a.addr, a.prefix)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(&format!("adding {a} to {}", i.mac)))?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl(&format!("bringing {} up", i.mac)))?;
        }
        for r in &plan.routes {
            let what = format!("route to {}", r.destination);
            let invalid = |e| NetError::Invalid(format!("{what}: {e}"));
            let mut m = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(r.destination.network(), r.destination.prefix)
                .map_err(invalid)?
                .output_interface(index_of(r.via)?);
            if let Some(g) = r.gateway {
                m = m.gateway(g).map_err(invalid)?;
            }
            h.route()
                .add(m.build())
                .replace()
                .execute()
                .await
                .map_err(nl(&what))?;
        }
        Ok(())
    })
    .await
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |source| NetError::Netlink {
        what: what.to_string(),
        source,
    }
}

/// Runs `f` with a handle on a fresh rtnetlink connection, which ends with it.
async fn with_handle<F, Fut>(f: F) -> Result<(), NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), NetError>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    let driver = tokio::spawn(conn);
    let r = f(handle).await;
    driver.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agent::{Interface, Route};

    fn request() -> ConfigureNetworkRequest {
        ConfigureNetworkRequest {
            interfaces: vec![Interface {
                mac: "52:54:00:00:00:02".into(),
                name: "eth0".into(),
                addresses: vec!["10.89.0.2/24".into()],
                mtu: 1500,
                ..Default::default()
            }],
            routes: vec![Route {
                destination: "default".into(),
                gateway: "10.89.0.1".into(),
                ..Default::default()
            }],
            dns_servers: vec!["10.89.0.1".into()],
            dns_search: vec!["example.org".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_good_request_becomes_a_plan_with_routes_on_the_gateways_interface() {
        let p = Plan::parse(&request()).unwrap();
        assert_eq!(p.interfaces[0].name.as_deref(), Some("eth0"));
        assert_eq!(p.routes[0].via, p.interfaces[0].mac);
        assert_eq!(p.routes[0].destination.prefix, 0);
        assert_eq!(
            p.identity.addresses,
            vec!["10.89.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            p.identity.resolv_conf(),
            "nameserver 10.89.0.1\nsearch example.org\n"
        );
    }

    #[test]
    fn bad_values_are_named_and_nothing_is_planned() {
        type Mutation = Box<dyn Fn(&mut ConfigureNetworkRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.interfaces[0].mac = "52:54".into()), "MAC"),
            (
                Box::new(|r| r.interfaces[0].name = "a/b".into()),
                "interface name",
            ),
            (
                Box::new(|r| r.interfaces[0].name = "x".repeat(16)),
                "interface name",
            ),
            (
                Box::new(|r| r.interfaces[0].addresses[0] = "10.89.0.2".into()),
                "ADDRESS/PREFIX",
            ),
            (Box::new(|r| r.interfaces[0].mtu = 20), "MTU"),
            (
                Box::new(|r| r.routes[0].gateway = "10.1.1.1".into()),
                "on no interface",
            ),
            (
                Box::new(|r| r.routes[0].gateway = "fd00::1".into()),
                "another family",
            ),
            (Box::new(|r| r.routes[0].gateway = "nope".into()), "gateway"),
            (
                Box::new(|r| r.routes[0].interface_mac = "52:54:00:00:00:09".into()),
                "not configured",
            ),
            (
                Box::new(|r| r.dns_servers[0] = "dns.example".into()),
                "DNS server",
            ),
            (
                Box::new(|r| r.dns_search[0] = "a\nnameserver 1.2.3.4".into()),
                "one word",
            ),
            (
                Box::new(|r| r.interfaces.push(r.interfaces[0].clone())),
                "twice",
            ),
        ];
        for (mutate, want) in cases {
            let mut r = request();
            mutate(&mut r);
            let e = Plan::parse(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn no_nameservers_means_an_empty_resolv_conf() {
        assert_eq!(Identity::default().resolv_conf(), "");
    }
}
